"""The `genunc` command: subcommands fit, fit_laplace, predict, evaluate and demo.

Each subcommand is a LightningCLI with its own config schema, so ``--help`` and
``--print_config`` show exactly the keys that subcommand reads. Config files compose:
``genunc fit_laplace --config configs/toy/model.yaml --config configs/toy/fit_laplace.yaml``.

Under ``strategy=ddp`` Lightning relaunches ``sys.argv`` for the other ranks, so run the same
command line on every rank (``genunc ...`` or ``python -m genunc_lightning.cli ...``).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from genunc_lightning.data import DiffusionDataModule
from genunc_lightning.data.predict import SeedDataModule
from genunc_lightning.laplace import FisherAccumulationCallback, LaplaceFitModule
from genunc_lightning.uncertainty import GenerativeUncertaintyModule, ScoredSampleWriter

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class _FitCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Any LightningModule trains; a config that names none trains a diffusion model.
        parser.set_defaults({"model": {"class_path": "genunc_lightning.models.DiffusionTrainingModule"}})


class _FitLaplaceCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(FisherAccumulationCallback, "laplace")


class _PredictCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ScoredSampleWriter, "writer")
        # Seeds (and classes) by default; data.class_path: genunc_lightning.data.PromptDataModule for prompts.
        parser.set_defaults({"data": {"class_path": "genunc_lightning.data.SeedDataModule"}})


def run_fit(args: Sequence[str]) -> LightningCLI:
    """`genunc fit`: plain LightningCLI fit; the model defaults to ``DiffusionTrainingModule``.

    Any LightningModule can be named with ``model.class_path`` (the demo's classifiers use
    ``genunc_lightning.experiments.digits.ClassifierTrainingModule``).
    """
    return _FitCLI(
        LightningModule,
        DiffusionDataModule,
        subclass_mode_model=True,
        args=["fit", *args],
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"fit": {"prog": "genunc fit"}},
    )


def _predict_loop(cli_class: type[LightningCLI], module: type, datamodule: type, args: Sequence[str], prog: str,
                  subclass_mode_data: bool = False, **trainer_defaults: Any) -> LightningCLI:  # fmt: skip
    """Builds the CLI without running it, then runs ``Trainer.predict`` (LightningCLI has no predict-only run)."""
    cli = cli_class(
        module,
        datamodule,
        subclass_mode_data=subclass_mode_data,
        args=list(args),
        run=False,
        save_config_callback=None,
        trainer_defaults={"logger": False, "enable_checkpointing": False, **trainer_defaults},
        parser_kwargs={"prog": prog},
    )
    cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    return cli


def run_fit_laplace(args: Sequence[str]) -> LightningCLI:
    """`genunc fit_laplace`: one Fisher pass over a training subset, then the posterior file.

    Runs ``Trainer.predict`` with ``LaplaceFitModule`` and ``FisherAccumulationCallback`` (the
    ``laplace:`` section of the config).
    """
    return _predict_loop(_FitLaplaceCLI, LaplaceFitModule, DiffusionDataModule, args, "genunc fit_laplace",
                         inference_mode=False)  # fmt: skip


def run_predict(args: Sequence[str]) -> LightningCLI:
    """`genunc predict`: uncertainty-scored samples into a resumable run directory.

    Runs ``Trainer.predict`` with ``GenerativeUncertaintyModule``, ``SeedDataModule`` (or, with
    ``data.class_path: genunc_lightning.data.PromptDataModule``, prompts) and ``ScoredSampleWriter``
    (the ``writer:`` section of the config).
    """
    return _predict_loop(_PredictCLI, GenerativeUncertaintyModule, SeedDataModule, args, "genunc predict",
                         subclass_mode_data=True)  # fmt: skip


def run_evaluate(args: Sequence[str]) -> dict:
    """`genunc evaluate`: FID, precision and recall of kept subsets of a predict run (see ``Evaluation``)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from genunc_lightning.evaluation import Evaluation

    parser = ArgumentParser(prog="genunc evaluate", description=Evaluation.__doc__)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file(s)")
    parser.add_class_arguments(Evaluation)
    cfg = parser.parse_args(list(args))
    init = parser.instantiate(cfg)
    init.pop("config", None)
    evaluation = Evaluation(**init)
    report = evaluation.run()
    print((evaluation.output_dir / "evaluation.md").read_text(encoding="utf-8"))
    print(f"Written to {evaluation.output_dir}")
    return report


def run_demo(args: Sequence[str]) -> Any:
    """`genunc demo`: the paper's experiments in miniature on the shipped checkpoints (see ``demo``)."""
    from genunc_lightning.experiments.demo import main as demo_main

    return demo_main(list(args))


# Errors raised on bad input or a bad environment, each with a message that names the problem and the fix.
KNOWN_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, FloatingPointError, KeyError)

SUBCOMMANDS: dict[str, Callable[[Sequence[str]], Any]] = {
    "fit": run_fit,
    "fit_laplace": run_fit_laplace,
    "predict": run_predict,
    "evaluate": run_evaluate,
    "demo": run_demo,
}

USAGE = """usage: genunc {fit,fit_laplace,predict,evaluate,demo} [--config CONFIG.yaml ...] [--print_config] [--help]

  fit          train a denoiser (LightningCLI fit with DiffusionTrainingModule)
  fit_laplace  fit the diagonal last-layer Laplace posterior over a training subset
  predict      generate uncertainty-scored samples into a resumable run directory
  evaluate     FID, precision and recall of the samples each score keeps, against random subsets
  demo         the embedded default, offline: train, fit the posterior, report

Example:
  genunc fit --config configs/toy/model.yaml --config configs/toy/fit.yaml
  genunc fit_laplace --config configs/toy/model.yaml --config configs/toy/fit_laplace.yaml
  genunc predict --config configs/toy/model.yaml --config configs/toy/predict.yaml
  genunc evaluate --config configs/toy/evaluate.yaml
"""


class _WithoutLightningTips(logging.Filter):
    """Drops Lightning's advertising lines ("💡 Tip: … litlogger"), which are not the user's concern."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def quiet_lightning() -> None:
    """What every `genunc` run would otherwise print that says nothing about the run."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _WithoutLightningTips) for f in log.filters):
        log.addFilter(_WithoutLightningTips())
    # Lightning's own pytree helper uses torch's deprecated LeafSpec; nothing the user can change.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `genunc` console script."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_lightning()
    # As `python -m` does: the user's own modules (class_path: my_repo.MyModel) import from the working directory.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    # We pass the subcommand's own arguments to LightningCLI on purpose.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"genunc: unknown subcommand {command!r}; choose one of {', '.join(SUBCOMMANDS)}.\n", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        raise SystemExit(2)
    try:
        SUBCOMMANDS[command](rest)
    except KNOWN_ERRORS as err:
        if os.environ.get("GENUNC_TRACEBACK"):
            raise
        # A known error says what is wrong and how to fix it: one line, as LightningCLI prints parse errors.
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"genunc {command}: error: {message} (GENUNC_TRACEBACK=1 shows where)", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
