"""`genunc demo`: the whole pipeline on the paper's 2D toy (§4.1), offline, with the project's configs.

1. `genunc fit`: trains the MLP diffusion model on 25 Gaussian modes on a 5×5 grid.
2. `genunc fit_laplace`: fits the diagonal last-layer Laplace posterior (σ and λ: `auto`).
3. `genunc predict`: DDPM samples with their generative uncertainty (identity features).
4. Drops the 50% most uncertain and reports the hallucination rate (samples farther than 3, 4 and
   5 mode standard deviations from every mode) before and after, like the paper's Figure 2.
5. `genunc evaluate`: precision, recall and FID of the kept half against random halves.

Writes ``report.json``, ``report.md`` and ``toy_scatter.png`` into the output directory.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from genunc_lightning.io import write_text_atomic


def hallucination_rates(points: torch.Tensor, modes: torch.Tensor, std: float, ks=(3, 4, 5)) -> dict[str, float]:
    """Fraction of points farther than k·std from every mode, for each k."""
    dist = torch.cdist(points.double(), modes.double()).min(1).values
    return {f"{k}std": (dist > k * std).double().mean().item() for k in ks}


def toy_report(samples: torch.Tensor, scores: torch.Tensor, modes: torch.Tensor, std: float) -> dict:
    """Hallucination rates before and after dropping the most uncertain half."""
    keep = scores.argsort(stable=True)[: len(scores) // 2]
    before = hallucination_rates(samples, modes, std)
    after = hallucination_rates(samples[keep], modes, std)
    return {
        "before": before,
        "after": after,
        "after_over_before": {k: after[k] / before[k] if before[k] > 0 else float("nan") for k in before},
    }


def scatter(samples: torch.Tensor, scores: torch.Tensor, path: Path) -> None:
    """All samples, then the kept (most certain) half, like the paper's Figure 2."""
    from genunc_lightning.plots import _figure, _save

    keep = scores.argsort(stable=True)[: len(scores) // 2]
    plt, fig, axes = _figure(2, 4.5, 4.5)
    for ax, pts, title in ((axes[0][0], samples, "all samples"), (axes[0][1], samples[keep], "50% least uncertain")):
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4)
        ax.set_title(f"{title} ({len(pts)})")
        ax.set_xlim(-3, 3)
        ax.set_ylim(-3, 3)
        ax.set_aspect("equal")
    _save(plt, fig, path)


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the demo; returns the report it writes."""
    from genunc_lightning.cli import CONFIG_DIR, run_evaluate, run_fit, run_fit_laplace, run_predict
    from genunc_lightning.data.toy import grid_modes
    from genunc_lightning.uncertainty.writer import read_shards

    parser = argparse.ArgumentParser(prog="genunc demo", description=__doc__)
    parser.add_argument("--output", default="runs/demo", help="directory for checkpoints, runs and the report")
    parser.add_argument("--max-steps", type=int, default=3000, help="training steps of the toy model")
    parser.add_argument("--samples", type=int, default=10000, help="toy samples to generate and score")
    args = parser.parse_args(list(argv or []))
    out = Path(args.output)
    toy = CONFIG_DIR / "toy"
    if not (toy / "model.yaml").is_file():
        raise FileNotFoundError(f"The demo configs are not at {CONFIG_DIR}: run the demo from a checkout.")
    model_cfg = ["--config", str(toy / "model.yaml")]
    ckpt, posterior, run_dir = out / "denoiser.ckpt", out / "posterior.safetensors", out / "predict"

    print(f"[1/4] genunc fit: training the toy diffusion model ({args.max_steps} steps)", flush=True)
    run_fit([*model_cfg, "--config", str(toy / "fit.yaml"), "--trainer.max_steps", str(args.max_steps),
             "--trainer.default_root_dir", str(out), "--trainer.callbacks.dirpath", str(out)])  # fmt: skip
    print("[2/4] genunc fit_laplace: the diagonal last-layer Laplace posterior", flush=True)
    run_fit_laplace([*model_cfg, "--config", str(toy / "fit_laplace.yaml"), "--model.checkpoint", str(ckpt),
                     "--laplace.output", str(posterior)])  # fmt: skip
    print(f"[3/4] genunc predict: {args.samples} samples with their generative uncertainty", flush=True)
    run_predict([*model_cfg, "--config", str(toy / "predict.yaml"), "--model.checkpoint", str(ckpt),
                 "--model.posterior", str(posterior), "--writer.output_dir", str(run_dir),
                 "--data.num_samples", str(args.samples)])  # fmt: skip
    cols = read_shards(run_dir, columns=["index", "sample", "score.pixel"])
    order = cols["index"].argsort()
    samples, scores = cols["sample"][order], cols["score.pixel"][order]
    report = {"samples": len(samples), "hallucinations": toy_report(samples, scores, grid_modes(), 0.1)}
    scatter(samples, scores, out / "toy_scatter.png")
    print("[4/4] genunc evaluate: the kept half against random halves", flush=True)
    evaluation = run_evaluate(["--config", str(toy / "evaluate.yaml"), "--run_dir", str(run_dir),
                               "--output_dir", str(out / "evaluation")])  # fmt: skip
    report["evaluation"] = evaluation["results"]
    write_text_atomic(out / "report.json", json.dumps(report, indent=2))
    write_text_atomic(out / "report.md", markdown(report))
    print()
    print(markdown(report))
    print(f"Report: {out / 'report.md'}, {out / 'report.json'}; figures in {out}")
    return report


def markdown(report: dict) -> str:
    """The demo's report as Markdown."""
    h = report["hallucinations"]
    lines = [
        f"## Toy: {report['samples']} DDPM samples, the 50% most uncertain dropped",
        "",
        "| farther than | before | after | after / before |",
        "|---|---|---|---|",
    ]
    for k in h["before"]:
        lines.append(
            f"| {k[:-3]} std | {100 * h['before'][k]:.2f}% | {100 * h['after'][k]:.2f}% | "
            f"{100 * h['after_over_before'][k]:.0f}% |"
        )
    lines += ["", "| kept set | FID ↓ | precision ↑ | recall ↑ |", "|---|---|---|---|"]
    for name, r in report["evaluation"].items():
        lines.append(f"| {name} | {r['fid']:.4g} | {r['precision']:.3f} | {r['recall']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
