"""FisherAccumulationCallback: sums Fisher contributions over batches and ranks, writes the posterior."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from genunc_lightning.io import check_writable_file, remove_empty_dirs
from genunc_lightning.laplace.fisher import FisherBatch
from genunc_lightning.laplace.posterior import AUTO, DiagonalLaplacePosterior, FisherConvention, fisher_convention

PRESETS = {
    # The paper's public code: laplace-torch's regression EF with σ = λ = 1 and N = n (precision 2H + 1).
    "paper": {"sigma": 1.0, "prior_precision": 1.0, "dataset_size": None, "temperature": 1.0,
              "convention": FisherConvention.LAPLACE_TORCH},
}  # fmt: skip


class FisherAccumulationCallback(Callback):
    """Accumulates ``FisherBatch`` outputs of ``LaplaceFitModule.predict_step`` into a posterior.

    At the end of the predict loop the sums are reduced across DDP ranks, the posterior is built
    around the module's pretrained last layer (``DiagonalLaplacePosterior.fit``), kept as
    ``self.posterior``, written by rank 0 to ``output`` (atomically) and summarised.

    Args:
        output: path of the posterior safetensors file; ``None`` writes nothing.
        sigma: observation noise σ, or ``"auto"`` (σ² = mean squared residual).
        prior_precision: λ, or ``"auto"`` (maximises the log marginal likelihood).
        dataset_size: N, the training-set size the likelihood is scaled to (default: n, the
            examples seen, as in the paper's public code).
        temperature: multiplies the posterior variance.
        convention: how the Fisher enters the precision: ``ef`` ((N/n)·H/σ⁴ + λ, the empirical Fisher
            of N(f, σ²)) or ``laplace_torch`` ((N/n)·2H/σ² + λ, laplace-torch's regression EF).
        preset: ``paper`` sets σ = λ = 1, N = n, temperature 1 and ``laplace_torch``: the posterior of
            the paper's public code. Any of those options given with another value is an error.
    """

    def __init__(
        self,
        output: str | None = "posterior.safetensors",
        sigma: float | str = AUTO,
        prior_precision: float | str = AUTO,
        dataset_size: int | None = None,
        temperature: float = 1.0,
        convention: str = FisherConvention.EF.value,
        preset: str | None = None,
    ) -> None:
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
            given = {"sigma": sigma, "prior_precision": prior_precision, "dataset_size": dataset_size,
                     "temperature": temperature, "convention": convention}  # fmt: skip
            defaults = {"sigma": AUTO, "prior_precision": AUTO, "dataset_size": None, "temperature": 1.0,
                        "convention": FisherConvention.EF.value}  # fmt: skip
            fixed = PRESETS[preset]
            clash = [k for k in given if given[k] != defaults[k] and given[k] != fixed[k]]
            if clash:
                raise ValueError(
                    f"preset={preset!r} fixes {', '.join(clash)}; drop "
                    f"{'that option' if len(clash) == 1 else 'those options'} or the preset."
                )
            sigma, prior_precision, dataset_size = fixed["sigma"], fixed["prior_precision"], fixed["dataset_size"]
            temperature, convention = fixed["temperature"], fixed["convention"]
        for name, value in (("sigma", sigma), ("prior_precision", prior_precision)):
            if value != AUTO and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name} must be 'auto' or a positive number, got {value!r}.")
        if dataset_size is not None and dataset_size < 1:
            raise ValueError(f"dataset_size must be positive, got {dataset_size}.")
        self.output = output
        self.sigma = sigma
        self.prior_precision = prior_precision
        self.dataset_size = dataset_size
        self.temperature = temperature
        self.convention = fisher_convention(convention)  # fails here, not after the Fisher pass
        self.preset = preset
        self.posterior: DiagonalLaplacePosterior | None = None
        self._reset()

    def _reset(self) -> None:
        self._diag: dict[str, torch.Tensor] | None = None
        self._totals = torch.zeros(3, dtype=torch.float64)  # squared residuals, residual count, examples

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Checks, before the Fisher pass, that the posterior file can be written."""
        self._created_dirs: list[Path] = []
        self._started = self._failed = False
        if self.output is not None and trainer.is_global_zero:
            self._created_dirs = check_writable_file(self.output, "the posterior (laplace.output)")

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Clears the sums."""
        if not hasattr(pl_module, "adapter"):
            raise TypeError("FisherAccumulationCallback works with LaplaceFitModule (a module with an adapter).")
        self._started = True
        self._reset()
        self.posterior = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """A failed pass leaves no folder that only the output check created."""
        self._failed = True
        remove_empty_dirs(getattr(self, "_created_dirs", []))

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Refuses a pass that ran no batch: Lightning skips the loop, and its end hook, for an empty loader."""
        if stage == "predict" and not self._started and not self._failed:
            raise ValueError(
                "The Fisher pass saw no examples: the data module's predict loader (the training subset) is empty. "
                "Check the dataset and data.subset; no posterior was written."
            )

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Adds one batch's contribution."""
        if not isinstance(outputs, FisherBatch):
            raise TypeError(f"Expected a FisherBatch from predict_step, got {type(outputs).__name__}.")
        if self._diag is None:
            self._diag = {n: torch.zeros_like(v) for n, v in outputs.diag.items()}
        for n, v in outputs.diag.items():
            self._diag[n] += v
        self._totals += torch.tensor(
            [float(outputs.squared_residual_sum), outputs.num_residuals, outputs.num_examples], dtype=torch.float64
        )

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Reduces across ranks, builds the posterior, writes it on rank 0."""
        layer = pl_module.adapter.last_layer_module
        names = [n for n, _ in layer.named_parameters(recurse=False)]
        device = pl_module.device
        if self._diag is None:  # a rank with no batch still joins the reduction
            self._diag = {
                n: torch.zeros(p.shape, dtype=torch.float64, device=device)
                for n, p in layer.named_parameters(recurse=False)
            }
        flat = torch.cat([self._diag[n].flatten().to(device) for n in names] + [self._totals.to(device)])
        flat = trainer.strategy.reduce(flat, reduce_op="sum").cpu()
        fisher, offset = {}, 0
        for n in names:
            size = self._diag[n].numel()
            fisher[n] = flat[offset : offset + size].view(self._diag[n].shape)
            offset += size
        sq_sum, num_residuals, num_examples = flat[offset:].tolist()
        if num_examples == 0:
            raise ValueError("The Fisher pass saw no examples: the training subset is empty.")
        self.posterior = DiagonalLaplacePosterior.fit(
            layer,
            pl_module.adapter.last_layer,
            fisher,
            int(num_examples),
            sq_sum,
            int(num_residuals),
            sigma=self.sigma,
            prior_precision=self.prior_precision,
            dataset_size=self.dataset_size,
            temperature=self.temperature,
            convention=self.convention,
        )
        if self.preset is not None:
            self.posterior.info["preset"] = self.preset
        if trainer.is_global_zero and self.output is not None:
            path = self.posterior.save(self.output)
            rank_zero_info(f"{self.posterior.format_summary()}\nPosterior written to {Path(path).resolve()}")
        elif self.output is None:
            rank_zero_info(self.posterior.format_summary())
        self._reset()
