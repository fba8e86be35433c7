"""`genunc demo`: the paper's experiments in miniature, offline, with the checkpoints shipped in the package.

1. Toy (paper §4.1, after Aithal et al. 2024): 25 Gaussian modes on a 5×5 grid, an MLP diffusion
   model, DDPM samples. Generative uncertainty from (a) a 5-member deep ensemble and (b) the
   last-layer Laplace posterior of one member (`auto` scale; also the paper's σ = λ = 1). The 50%
   most uncertain are dropped, and the hallucination rate (farther than 3, 4, 5 mode std from every
   mode) is reported before and after, with scatter plots like the paper's Figure 2.
2. Digits (paper §4.2–4.3 in miniature): the primary setting of the pre-registered experiment
   (docs/digits_experiment_rules.md): the digits UNet the rule picked from the model-quality sweep,
   300 samples of which 250 are kept, evaluated on held-out digits in two feature spaces (a classifier
   the scorer never saw, and pixel PCA) against the real-vs-real noise floor, with FID, KID,
   precision and recall, 200 random kept sets, and verdicts computed by the gate. Also: the cost
   sweep M ∈ {1, 5} × T′ ∈ {T, T/5}, the posterior scale (the paper's σ = λ = 1, `auto`, and
   temperatures a decade either side), and grids of the most and least uncertain samples.
3. Replicated (issue 23): the pre-registered test across 8 digits UNets (docs/replication_rules.md).
   The shipped snapshots of the 8 models are checked to be the files the committed results were
   computed from (SHA-256), and every verdict is recomputed from the results' per-pool numbers.
   Re-drawing the 16 pools is `make replication` (31 min on 2 cores, beyond the demo's budget).

Everything is written to ``<output>/report.md`` and ``report.json`` (the same numbers), with plots.
The sweep itself is `make experiments` (docs/experiments.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from genunc_lightning.evaluation import keep_best, load_run
from genunc_lightning.evaluation.gate import FAILS, GATE_QUANTILE, HOLDS, UNINFORMATIVE
from genunc_lightning.experiments.digits_experiment import (
    PRIMARY_SAMPLER_STEPS,
    PRIMARY_TRAINING_STEPS,
    ExperimentSizes,
    HeldOutEvaluation,
    digits_adapter,
    run_point,
)
from genunc_lightning.experiments.replication import RESULTS_FILE, check_results
from genunc_lightning.experiments.runs import fit_posterior, load_adapter, scored_run
from genunc_lightning.io import write_text_atomic

TOY_MEMBERS = [f"toy_mlp_{i}.safetensors" for i in range(5)]
PAPER_TOY = "laplace (paper preset: laplace-torch EF, sigma = lambda = 1, N = n)"
TOY_METHODS = ("ensemble (5 members)", "laplace (auto)", PAPER_TOY)
PAPER_DIGITS = "paper preset (laplace-torch EF, sigma = lambda = 1, N = n)"


# A smoke run's sizes, not the experiment's.
QUICK_EXPERIMENT = ExperimentSizes(samples=60, keep=50, reference=200, null_sets=20, floor_draws=20, kid_subsets=2)


@dataclass
class DemoSizes:
    """How big the demo runs (the defaults fit 10 minutes on 2 CPU cores; tests use smaller ones)."""

    toy_samples: int = 20000
    toy_fit_points: int = 20000
    experiment: ExperimentSizes = field(default_factory=ExperimentSizes)
    steps: int | None = None  # the digits sampler's steps (None: the primary setting's 50)
    temperatures: list[float] = field(default_factory=lambda: [0.1, 10.0])


def hallucination_rates(points: torch.Tensor, modes: torch.Tensor, std: float, ks=(3, 4, 5)) -> dict[str, float]:
    """Fraction of points farther than k·std from every mode, for each k."""
    dist = torch.cdist(points.double(), modes.double()).min(1).values
    return {f"{k}std": (dist > k * std).double().mean().item() for k in ks}


def filtered_rates(samples: torch.Tensor, kept: torch.Tensor, modes: torch.Tensor, std: float) -> dict:
    """Hallucination rates of all samples and of the ``kept`` ones."""
    before, after = hallucination_rates(samples, modes, std), hallucination_rates(kept, modes, std)
    return {
        "before": before,
        "after": after,
        "after_over_before": {k: after[k] / before[k] if before[k] > 0 else float("nan") for k in before},
    }


# --- 1. the toy ---------------------------------------------------------------------------------


def toy_adapter() -> Any:
    """The shipped toy MLP (ensemble member 0) in its DDPM adapter, T = 100."""
    from genunc_lightning.adapters import GaussianDiffusionAdapter
    from genunc_lightning.models import MLPDenoiser

    adapter = GaussianDiffusionAdapter(MLPDenoiser(hidden=128, depth=3), "out", (2,), sampler="ddpm", steps=100)
    return load_adapter(adapter, TOY_MEMBERS[0])


def toy_posterior(adapter: Any, sizes: DemoSizes) -> Any:
    """The `auto`-scale posterior of the toy model over ``sizes.toy_fit_points`` grid points."""
    from genunc_lightning.data import GaussianGrid2D

    return fit_posterior(adapter, GaussianGrid2D(num_points=sizes.toy_fit_points, seed=0), batch_size=2000)


def run_toy(out: Path, sizes: DemoSizes, methods: Collection[str] | None = None) -> dict:
    """Ensemble and Laplace generative uncertainty on the 2D toy; hallucination rates and scatters.

    Args:
        out: The demo's output folder (runs go to ``out/toy``, the figure to ``out/toy_figure2.png``).
        sizes: How many samples to draw and how many points the posterior is fitted on.
        methods: Which of ``TOY_METHODS`` to run (default: all three).
    """
    from genunc_lightning.data.toy import grid_modes
    from genunc_lightning.experiments.assets import asset_path
    from genunc_lightning.uncertainty import DeepEnsemble, PixelLikelihood

    if methods is not None and (unknown := set(methods) - set(TOY_METHODS)):
        raise ValueError(f"Unknown toy methods {sorted(unknown)}; choose from {list(TOY_METHODS)}.")
    adapter = toy_adapter()
    posterior = toy_posterior(adapter, sizes)
    toy_methods = dict(zip(TOY_METHODS, [DeepEnsemble([str(asset_path(m)) for m in TOY_MEMBERS[1:]]), posterior,
                                         posterior.paper()], strict=True))  # fmt: skip
    if methods is not None:
        toy_methods = {name: post for name, post in toy_methods.items() if name in methods}
    modes, results, kept_sets = grid_modes(), {}, {}
    samples = None
    for i, (name, post) in enumerate(toy_methods.items()):
        run_dir = out / "toy" / f"run{i}"
        print(f"  toy: {name}", flush=True)
        table, seconds = scored_run(run_dir, adapter, post, [PixelLikelihood()], sizes.toy_samples, 5000)
        if samples is None:
            samples = load_run(run_dir)[1]  # in table order, i.e. by index
        kept_sets[name] = samples[keep_best(table["pixel"], len(samples) // 2)]  # drop the most uncertain half
        results[name] = {**filtered_rates(samples, kept_sets[name], modes, 0.1), "seconds": seconds}
    _toy_figure(samples, kept_sets, out / "toy_figure2.png")
    return {"samples": len(samples), "posterior": posterior.summary(), "methods": results}


def _toy_figure(samples: torch.Tensor, kept: dict[str, torch.Tensor], path: Path) -> None:
    from genunc_lightning.plots import _figure, _save

    plt, fig, axes = _figure(1 + len(kept), 3.6, 3.8)
    for ax, (title, pts) in zip(axes[0], [("all samples", samples), *kept.items()], strict=True):
        ax.scatter(pts[:, 0], pts[:, 1], s=0.5, alpha=0.3)
        ax.set_title(title if title == "all samples" else f"kept 50%: {title}", fontsize=8)
        ax.set_xlim(-3, 3)
        ax.set_ylim(-3, 3)
        ax.set_aspect("equal")
    _save(plt, fig, path)


# --- 2. digits ----------------------------------------------------------------------------------


def run_digits(out: Path, sizes: DemoSizes) -> dict:
    """The pre-registered primary setting of the digits experiment, its cost sweep and its scale sweep.

    The model is the one docs/digits_experiment_rules.md §10 picks from the sweep (`make experiments`):
    ``PRIMARY_TRAINING_STEPS`` steps, DDIM at 50 steps. Everything is evaluated as the rules fix it.
    """
    from genunc_lightning.plots import extremes
    from genunc_lightning.uncertainty import SemanticLikelihood

    steps = sizes.steps or PRIMARY_SAMPLER_STEPS
    print("  digits: the held-out evaluation and its real-vs-real floor", flush=True)
    evaluation = HeldOutEvaluation(sizes.experiment)
    print(
        f"  digits: S = {PRIMARY_TRAINING_STEPS} training steps, T = {steps}: ours, the paper preset, pixel, "
        "BayesDiff, AU",
        flush=True,
    )
    main_report, posterior, point = run_point(out / "digits", evaluation, PRIMARY_TRAINING_STEPS, steps)
    grids = {}
    for name in ("semantic", "semantic_paper", "pixel"):
        path = out / "digits" / f"most_and_least_uncertain_{name}.png"
        extremes(point["samples"], point["scores"][name], False, path, title=f"{name} uncertainty (least | most)")
        grids[name] = str(path.relative_to(out))

    adapter = digits_adapter(PRIMARY_TRAINING_STEPS, steps)  # loaded once for the cost and scale sweeps

    def ours_only(run_dir: Path, **kwargs: Any) -> dict:
        """Ours alone (the semantic score), evaluated like the main run."""
        kwargs.setdefault("num_members", sizes.experiment.members)
        _, seconds = scored_run(
            run_dir,
            adapter,
            kwargs.pop("posterior", posterior),
            [SemanticLikelihood(evaluation.scorer)],
            num_samples=sizes.experiment.samples,
            batch_size=sizes.experiment.samples,
            num_classes=10,
            steps=steps,
            **kwargs,
        )
        table, samples = load_run(run_dir)
        report = evaluation.evaluate(samples, table["class"], {"semantic": table["semantic"]})
        return {"seconds": seconds, **summary(report, "semantic")}

    cost = {}
    for members, member_steps in [(1, steps), (1, steps // 5), (5, steps // 5)]:
        name = f"M={members}, T'={'T' if member_steps == steps else 'T/5'}"
        print(f"  digits cost sweep: {name}", flush=True)
        cost[name] = ours_only(
            out / "digits" / f"cost_M{members}_T{member_steps}", num_members=members, member_steps=member_steps
        )
    cost["M=5, T'=T"] = summary(main_report, "semantic")
    scale = {
        "auto (T = 1)": {
            **summary(main_report, "semantic"),
            "sigma": posterior.sigma,
            "prior_precision": posterior.prior_precision,
        }
    }
    scale[PAPER_DIGITS] = {**summary(main_report, "semantic_paper"), "sigma": 1.0, "prior_precision": 1.0}
    for t in sizes.temperatures:
        post = posterior.with_scale(temperature=t)
        print(f"  digits scale sweep: temperature {t:g}", flush=True)
        scale[f"auto, T = {t:g}"] = {
            **ours_only(out / "digits" / f"scale_T{t:g}", posterior=post),
            "sigma": post.sigma,
            "prior_precision": post.prior_precision,
        }
    return {
        "training_steps": PRIMARY_TRAINING_STEPS,
        "primary": main_report,
        "cost_sweep": cost,
        "scale_sweep": scale,
        "grids": grids,
        "sweep_figure": SWEEP_FIGURE,
    }


def summary(report: dict, method: str) -> dict:
    """One method's metrics in each space, its AUROC per failure type, and its verdicts."""
    return {
        "spaces": {name: space["methods"][method] for name, space in report["spaces"].items()},
        "auroc": {f: a[method] for f, a in report["auroc"].items()},
        "verdicts": {
            f"{v['metric']} | {v['space']}": v["verdict"] for v in report["verdicts"] if v["method"] == method
        },
    }


def check_claims(report: dict) -> list[dict]:
    """The toy's targets, and the digits verdicts (computed from the numbers by `evaluation.gate.verdicts`)."""
    claims = []
    for name in ("ensemble (5 members)", "laplace (auto)"):
        r = report.get("toy", {}).get("methods", {}).get(name)
        if r:
            ratio = r["after_over_before"]["5std"]
            claims.append(
                {
                    "claim": f"toy, {name}: at 5 std, the rate after filtering is at most 20% of the rate before",
                    "measured": f"{100 * r['before']['5std']:.2f}% -> {100 * r['after']['5std']:.2f}% "
                    f"({100 * ratio:.0f}%)",
                    "verdict": HOLDS if ratio <= 0.2 else FAILS,
                }
            )
    primary = report.get("digits", {}).get("primary")
    if primary:
        for v in primary["verdicts"]:
            if v["method"] not in ("semantic", "semantic_paper"):
                continue
            who = "ours" if v["method"] == "semantic" else "paper preset"
            g = primary["spaces"][v["space"]]["gate"][v["metric"]]
            measured = (
                f"{v['value']:.4g} vs random {g['null']:.4g} ± {g['null_std']:.2g} (gain {v['gain']:+.1f} std, "
                f"p = {v['p']:.3f}); floor {g['floor']:.4g} ± {g['floor_std']:.2g}, d = {g['distance']:.1f}"
            )
            if v["verdict"] == UNINFORMATIVE:
                measured += f" (within the floor's {GATE_QUANTILE:g} quantile, {g['threshold']:.4g}: real-like here)"
            claims.append(
                {
                    "claim": f"digits, {who}: {v['metric']} in {v['space']} features beats random kept sets",
                    "measured": measured,
                    "verdict": v["verdict"],
                }
            )
    for test in (report.get("replication") or {}).get("primary", {}).get("tests", {}).values():
        wins = sum(g > 0 for g in test["per_model"])
        claims.append(
            {
                "claim": f"digits, replicated across {len(test['per_model'])} models: {test['hypothesis']}",
                "measured": f"mean gain {test['mean']:+.2f} (> 0 in {wins} of {len(test['per_model'])}), "
                f"p = {test['p']:.4f}, Holm p = {test['p_holm']:.4f}",
                "verdict": test["verdict"],
            }
        )
    return claims


# --- the report ---------------------------------------------------------------------------------


SWEEP_FIGURE = "docs/experiments_gain_vs_floor.png"


def _digits_markdown(digits: dict) -> list[str]:
    from genunc_lightning.evaluation.report import gate_rows, result_rows

    p = digits["primary"]
    sz = p["sizes"]
    lines = [
        f"## Digits: the primary setting (S = {digits['training_steps']} training steps, T = {p['sampler_steps']})",
        "",
        f"{sz['samples']} samples, keep {sz['keep']}; reference: {sz['reference']} held-out digits; "
        f"null: {sz['null_sets']} random kept sets; floor: {sz['floor_draws']} real-vs-real draws at the same sizes. "
        "Rules: docs/digits_experiment_rules.md.",
        "",
        f"Held-out accuracy ({p['accuracy']['heldout_images']} digits nothing trained on): scorer "
        f"{100 * p['accuracy']['scorer']:.1f}%, evaluator {100 * p['accuracy']['evaluator']:.1f}%. Failure rates "
        f"of all samples: off-class {100 * p['failure_rates']['off_class']:.1f}% (real held-out digits: "
        f"{100 * (1 - p['accuracy']['evaluator']):.1f}%), off-manifold {100 * p['failure_rates']['off_manifold']:.1f}% "
        "(real: 5% by definition).",
        "",
        "### The gate: the model's random kept sets against the real-vs-real floor",
        "",
        *gate_rows({space: sp["gate"] for space, sp in p["spaces"].items()}),
    ]
    for space, sp in p["spaces"].items():
        rows = {"all samples": sp["all samples"], **sp["methods"], "random": sp["null"]}
        lines += ["", f"### Kept sets in {space} features", "", *result_rows(rows)]
    lines += [
        "",
        "### Which scores find the failures (AUROC)",
        "",
        "| score | off-class | off-manifold |",
        "|---|---|---|",
    ]
    for name in p["auroc"]["off_class"]:
        lines.append(f"| {name} | {p['auroc']['off_class'][name]:.3f} | {p['auroc']['off_manifold'][name]:.3f} |")
    lines += [
        "",
        "### Cost sweep (ours)",
        "",
        "| members and steps | FID (classifier) | precision (classifier) | "
        "FID (pixel-pca) | AUROC off-class | AUROC off-manifold |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in digits["cost_sweep"].items():
        lines.append(f"| {name} | {_summary_cells(r)} |")
    lines += [
        "",
        "### Posterior scale (ours)",
        "",
        "| posterior | sigma | lambda | FID (classifier) | "
        "precision (classifier) | FID (pixel-pca) | AUROC off-class | AUROC off-manifold |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in digits["scale_sweep"].items():
        lines.append(f"| {name} | {r['sigma']:.3g} | {r['prior_precision']:.3g} | {_summary_cells(r)} |")
    lines += [
        "",
        "### What a person would reject",
        "",
        *[
            f"- {name}: `{path}` (left: the 25 least uncertain; right: the 25 most)"
            for name, path in digits["grids"].items()
        ],
        "",
        f"When filtering helps, across model quality: the sweep's figure `{digits['sweep_figure']}` "
        "and docs/experiments.md (`make experiments`).",
    ]
    return lines


def _summary_cells(r: dict) -> str:
    c, px = r["spaces"]["classifier"], r["spaces"]["pixel-pca"]
    return (
        f"{c['fid']:.3g} | {c['precision']:.3f} | {px['fid']:.3g} | {r['auroc']['off_class']:.3f} | "
        f"{r['auroc']['off_manifold']:.3f}"
    )


def markdown(report: dict) -> str:
    """The report as Markdown: every number here is also in report.json."""
    lines = [
        "## Claims checked",
        "",
        "Digits verdicts are computed from report.json by the rules' gate "
        "(docs/digits_experiment_rules.md): a claim is tested only where the model's random kept sets are "
        f"worse than the real-vs-real floor's {GATE_QUANTILE:g} quantile. Replicated verdicts: Holm-corrected "
        "sign-flip tests across the 8 models (docs/replication_rules.md).",
        "",
        "| claim | measured | verdict |",
        "|---|---|---|",
    ]
    for c in check_claims(report):
        verdict = f"**{c['verdict']}**" if c["verdict"] == FAILS else c["verdict"]
        lines.append(f"| {c['claim']} | {c['measured']} | {verdict} |")
    lines.append("")
    toy = report.get("toy")
    if toy:
        lines += [
            f"## Toy: {toy['samples']} DDPM samples, the 50% most uncertain dropped",
            "",
            "| uncertainty from | > 3 std before → after | > 4 std before → after | > 5 std before → after "
            "| 5 std: after / before |",
            "|---|---|---|---|---|",
        ]
        for name, r in toy["methods"].items():
            cells = [f"{100 * r['before'][k]:.2f}% → {100 * r['after'][k]:.2f}%" for k in ("3std", "4std", "5std")]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * r['after_over_before']['5std']:.0f}% |")
        lines.append("")
    if report.get("digits"):
        lines += _digits_markdown(report["digits"])
    if report.get("replication"):
        lines += _replication_markdown(report["replication"])
    return "\n".join(lines) + "\n"


def _replication_markdown(replicated: dict) -> list[str]:
    from genunc_lightning.experiments.replication import noise_default_sentence, primary_rows

    return [
        f"## Replicated across {replicated['snapshots']} models ({replicated['results']})",
        "",
        f"The {replicated['snapshots']} shipped snapshots are the files these results were computed from (SHA-256 "
        f"checked), and every verdict below was recomputed now from the results' {replicated['pools']} pools. "
        "Rules: docs/replication_rules.md; re-drawing the pools: `make replication`.",
        "",
        *primary_rows(replicated),
        "",
        noise_default_sentence(replicated),
        "",
    ]


def write_docs(report: dict, out: Path, docs: Path) -> None:
    """The report the README quotes (``demo_report.json``) and its grid of the most and least uncertain digits."""
    import shutil

    from genunc_lightning.io import atomic_path

    write_text_atomic(docs / "demo_report.json", json.dumps(report, indent=1, default=str))
    grid = (report.get("digits") or {}).get("grids", {}).get("semantic")
    if grid:
        with atomic_path(docs / "digits_most_and_least_uncertain.png") as tmp:
            shutil.copyfile(out / grid, tmp)


def run_replication_check(results_file: Path) -> dict[str, Any] | None:
    """The replicated verdicts, checked against the shipped snapshots (None, with a note, without the file)."""
    if not results_file.is_file():
        print(f"  skipped: no {results_file} here (a clone of the repository has it; --replication-results names it)")
        return None
    checked = check_results(json.loads(results_file.read_text()))
    return {"results": str(results_file), **checked}


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the demo; returns the report it writes."""
    parser = argparse.ArgumentParser(prog="genunc demo", description=__doc__)
    parser.add_argument("--output", default="runs/demo", help="directory for the runs, the report and the figures")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not the experiment)")
    parser.add_argument("--only", choices=["toy", "digits", "replication"], default=None, help="run one part")
    parser.add_argument(
        "--docs", default=None, help="also write report.json as DIR/demo_report.json and the grid the README shows"
    )
    parser.add_argument(
        "--replication-results",
        default=str(RESULTS_FILE),
        help="the replicated experiment's results file (default: the clone's docs/replication_results.json)",
    )
    args = parser.parse_args(list(argv or []))
    sizes = DemoSizes() if not args.quick else DemoSizes(2000, 2000, QUICK_EXPERIMENT, steps=10, temperatures=[10.0])
    out = Path(args.output)
    start = time.perf_counter()
    report: dict[str, Any] = {"sizes": asdict(sizes)}
    if args.only in (None, "toy"):
        print("[1/3] Toy: ensemble and Laplace generative uncertainty (paper §4.1)", flush=True)
        report["toy"] = run_toy(out, sizes)
    if args.only in (None, "digits"):
        print("[2/3] Digits: the pre-registered experiment's primary setting (paper §4.2-4.3)", flush=True)
        report["digits"] = run_digits(out, sizes)
    if args.only in (None, "replication"):
        print("[3/3] Replicated: the shipped snapshots of the 8 models, the verdicts recomputed", flush=True)
        report["replication"] = run_replication_check(Path(args.replication_results))
    report["seconds"] = time.perf_counter() - start
    report["claims"] = check_claims(report)
    write_text_atomic(out / "report.json", json.dumps(report, indent=2, default=str))
    write_text_atomic(out / "report.md", markdown(report))
    if args.docs:
        write_docs(report, out, Path(args.docs))
    print()
    print(markdown(report))
    print(f"Report: {out / 'report.md'} (numbers in report.json), in {report['seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
