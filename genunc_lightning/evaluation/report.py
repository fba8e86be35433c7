"""The evaluation as people and programs read it: ``evaluation.json``, Markdown tables, plots (also the demo's)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from genunc_lightning.evaluation.gate import GATE_QUANTILE
from genunc_lightning.io import write_text_atomic
from genunc_lightning.uncertainty.run_directory import RunSamples


def write_evaluation(
    report: dict, out: Path, samples: torch.Tensor | RunSamples, rankings: dict[str, tuple[torch.Tensor, bool]]
) -> None:
    """evaluation.json, evaluation.md and the plots (``rankings``: the single scores' values to rank by).

    ``samples`` may be a run's ``RunSamples``: the grids read only the samples they show.
    """
    from genunc_lightning import plots

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "evaluation.json", json.dumps(_finite(report), indent=2))
    write_text_atomic(out / "evaluation.md", markdown_table(report))
    plots.metric_sweep(report["sweep"], report["results"].get("random"), out / "metrics_vs_fraction.png")
    for name, (values, higher) in rankings.items():
        safe = name.replace("/", "_").replace(" ", "_")
        plots.extremes(samples, values, higher, out / f"extremes_{safe}.png", title=name)
    if report["class_means"]:
        plots.class_means(report["class_means"], out / "class_uncertainty.png")
    plots.correlations(report["spearman"], out / "spearman.png")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _result_columns(results: dict[str, dict]) -> list[tuple[str, str]]:
    columns = [("fid", "FID ↓"), ("kid", "KID ↓ (MMD², raw features)"), ("precision", "precision ↑"),
               ("recall", "recall ↑"), ("off_class", "off-class ↓"), ("off_manifold", "off-manifold ↓")]  # fmt: skip
    return [
        (m, title)
        for m, title in columns
        if m in ("fid", "precision", "recall") or any(m in r for r in results.values())
    ]


def result_rows(results: dict[str, dict]) -> list[str]:
    """A Markdown table, header included: a row per kept set (repeated random sets: mean ± std)."""
    columns = _result_columns(results)
    rows = ["| kept by | " + " | ".join(title for _, title in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, r in results.items():
        if "subsets" in r:
            cells = [f"{r[m]:.4g} ± {r[m + '_std']:.2g}" for m, _ in columns]
            name = f"{name} ({r['subsets']} subsets)"
        else:
            cells = [f"{r[m]:.4g}" for m, _ in columns]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def auroc_rows(aurocs: dict[str, float]) -> list[str]:
    """A Markdown table of each score's AUROC for telling the off-class samples."""
    rows = ["| score | AUROC (off-class) |", "|---|---|"]
    return rows + [f"| {name} | {value:.3f} |" for name, value in aurocs.items()]


def markdown_table(report: dict) -> str:
    """The results as Markdown tables (random: mean ± std)."""
    lines = [
        f"Kept {report['kept']} of {report['samples']} samples; reference set of {report['reference']}; "
        f"k = {report['k']}.",
        "",
        *result_rows(report["results"]),
    ]
    if "off_class_auroc" in report:
        lines += ["", *auroc_rows(report["off_class_auroc"])]
    if "gate" in report:
        lines += ["", *gate_rows({"features": report["gate"]}), "", *verdict_rows(report["verdicts"])]
    if "reject_thresholds" in report:
        lines += ["", *threshold_rows(report["reject_thresholds"])]
    return "\n".join(lines) + "\n"


def threshold_rows(thresholds: dict[str, dict]) -> list[str]:
    """A Markdown table of each score's reject threshold with its guarantee, from the labelled samples."""
    first = next(iter(thresholds.values()))
    rows = [
        f"Reject thresholds from {first['calibration']} labelled samples: among kept samples the failure rate is "
        f"at most {first['alpha']:g} with probability at least {1 - first['delta']:g} (Learn-then-Test, exact "
        "binomial tests).",
        "",
        "| score | keep | kept of the labelled | their failure rate (upper bound) | rejected of the other samples |",
        "|---|---|---|---|---|",
    ]
    for name, t in thresholds.items():
        if t["threshold"] is None:
            needs = f"no threshold meets the guarantee (it needs ≥ {t['min_kept']} kept labelled samples)"
            rows.append(f"| {name} | {needs} | 0 | | {t['others_rejected']} of {t['others']} |")
            continue
        keep = t["keep"].replace("threshold", f"{t['threshold']:.6g}")
        rows.append(
            f"| {name} | {keep} | {t['kept_fraction']:.1%} | {t['kept_failure_rate']:.1%} "
            f"(≤ {t['failure_rate_upper_bound']:.1%}) | {t['others_rejected']} of {t['others']} |"
        )
    return rows


METRIC_LABELS = {"kid": "kid (MMD², raw features)"}  # a metric's name in tables, with its unit where it needs one


def gate_rows(spaces: dict[str, dict[str, dict]]) -> list[str]:
    """A Markdown table of the noise-floor gate per feature space and metric: floor, random kept sets, threshold.

    A single space named ``features`` (``genunc evaluate``'s one space) gets no space column.
    """
    named = list(spaces) != ["features"]
    head = ["space"] * named + [
        "metric",
        "floor (real vs real)",
        "random kept sets",
        "d (floor stds)",
        f"gate (floor's {GATE_QUANTILE:g} quantile)",
        "informative",
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for space, gates in spaces.items():
        for metric, g in gates.items():
            cells = [space] * named + [
                METRIC_LABELS.get(metric, metric),
                f"{g['floor']:.4g} ± {g['floor_std']:.2g}",
                f"{g['null']:.4g} ± {g['null_std']:.2g}",
                f"{g['distance']:.1f}",
                f"{g['threshold']:.4g}",
                "yes" if g["informative"] else "no",
            ]
            rows.append("| " + " | ".join(cells) + " |")
    return rows


def verdict_rows(found: list[dict]) -> list[str]:
    """A Markdown table of computed verdicts: gain over random (null stds), p-value, verdict."""
    rows = ["| kept by | metric | value | gain (null stds) | p | verdict |", "|---|---|---|---|---|---|"]
    for v in found:
        metric = METRIC_LABELS.get(v["metric"], v["metric"])
        where = f"{metric} ({v['space']})" if v.get("space", "features") != "features" else metric
        rows.append(
            f"| {v['method']} | {where} | {v['value']:.4g} | {v['gain']:+.2f} | {v['p']:.3f} | {v['verdict']} |"
        )
    return rows
