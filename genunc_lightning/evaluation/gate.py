"""Whether an evaluation can tell: the real-vs-real noise floor, the gate on it, and computed verdicts.

A filtering claim ("keeping the K least uncertain beats random kept sets of K on FID") can only be seen
where the model's random kept sets are measurably worse than real data of the same size: at the
floor, any selection can only look worse. So, per metric and feature space:

1. the **floor**: the metric of random real sets of K, drawn from held-out data, against the same fixed
   reference that the null and every score are measured against;
2. the **gate**: the model's random kept sets (the null) must be worse, on average, than the floor's
   ``GATE_QUANTILE`` empirical quantile (its 1 − ``GATE_QUANTILE`` quantile for precision, where higher
   is better), else the metric is *uninformative at this scale*. A quantile, not a number of floor
   stds, because the floor is skewed (FID skew ≈ 2 on digits), so "3 stds" has no fixed tail meaning;
3. the **verdict** of a score that passes the gate: its gain over the null in null standard deviations,
   and the empirical one-sided p-value of its kept set among the null's; the claim *holds* when
   p ≤ ``SIGNIFICANCE``.

Everything here is a pure function of feature tensors or of the report's numbers, so verdicts are
recomputed from ``report.json`` (``verdicts``), never written by hand. The rules these implement are
fixed in docs/digits_experiment_rules.md.
"""

from __future__ import annotations

from typing import Any

import torch

from genunc_lightning.evaluation.measurement import ReferenceMeasure, mean_and_std

# +1: lower is better (the model's random sets sit above the floor); -1: higher is better.
GATED_METRICS = {"fid": 1.0, "kid": 1.0, "precision": -1.0}
GATE_QUANTILE = 0.99
SIGNIFICANCE = 0.05
# The fewest null kept sets whose empirical p-value can reach SIGNIFICANCE: 1 / (1 + R) ≤ SIGNIFICANCE.
MIN_NULL_SETS = round(1 / SIGNIFICANCE) - 1
HOLDS, FAILS, UNINFORMATIVE = "holds", "does not hold", "uninformative at this scale"


def check_floor_sizes(available: int, kept_size: int) -> None:
    """Raises ValueError when ``available`` held-out items cannot give real sets of ``kept_size``."""
    if kept_size > available:
        raise ValueError(
            f"The floor draws real sets of {kept_size} (the kept size) from the held-out items, but there are "
            f"{available}: hold out more data or lower the kept size."
        )


def noise_floor(
    reference: torch.Tensor,
    heldout: torch.Tensor,
    kept_size: int,
    draws: int = 200,
    k: int = 3,
    kid_subsets: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Real-vs-real metrics at the experiment's sizes, against the fixed reference the null is measured on.

    Each draw takes a random real set of ``kept_size`` from ``heldout`` [H, D] (features of real data
    disjoint from ``reference``) and measures it as a kept set is measured: the same reference, metrics
    and KID subset size. Draw ``i`` is the first ``kept_size`` of the ``i``-th permutation from a generator
    seeded with ``seed``.

    Returns:
        Each metric's mean and ``<metric>_std`` over the draws, ``subsets`` (the number of draws), and
        ``values``: every draw's value per metric.
    """
    check_floor_sizes(len(heldout), kept_size)
    g = torch.Generator().manual_seed(seed)
    subsets = [torch.randperm(len(heldout), generator=g)[:kept_size] for _ in range(draws)]
    measure = ReferenceMeasure(reference, heldout, k, kid_subsets=kid_subsets, kid_subset_size=kept_size, seed=seed)
    return with_values([measure(i) for i in subsets])


def floor_quantile(values: list[float], metric: str) -> float:
    """The floor's gate threshold: its ``GATE_QUANTILE`` quantile, or the opposite one where higher is better."""
    q = GATE_QUANTILE if GATED_METRICS[metric] > 0 else 1.0 - GATE_QUANTILE
    return float(torch.tensor(values, dtype=torch.float64).quantile(q))


def with_values(runs: list[dict[str, float]]) -> dict[str, Any]:
    """``mean_and_std`` of repeated measurements, keeping every value (for verdicts recomputed later)."""
    return {**mean_and_std(runs), "values": {m: [r[m] for r in runs] for m in runs[0]}}


def gate(floor: dict[str, Any], null: dict[str, Any], metric: str) -> dict[str, Any]:
    """Whether the null (random kept sets) is worse than the floor's gate quantile, and how far from the floor.

    The distance, in floor stds, is signed so that > 0 means the model's random kept sets are worse than
    real data; it describes, the quantile decides.
    """
    sign = GATED_METRICS[metric]
    std = floor[f"{metric}_std"]
    distance = sign * (null[metric] - floor[metric]) / std if std > 0 else float("inf") * sign
    threshold = floor_quantile(floor["values"][metric], metric)
    return {
        "distance": float(distance),
        "threshold": threshold,
        "informative": bool(sign * (null[metric] - threshold) > 0),
        "floor": floor[metric],
        "floor_std": std,
        "null": null[metric],
        "null_std": null[f"{metric}_std"],
    }


def verdict(value: float, null_values: list[float], metric: str, informative: bool) -> dict[str, Any]:
    """A score's gain over the null (in null stds), its one-sided p-value among the null, and the verdict."""
    sign = GATED_METRICS[metric]
    null = torch.tensor(null_values, dtype=torch.float64)
    std = float(null.std())
    gain = sign * (float(null.mean()) - value) / std if std > 0 else 0.0
    as_good = int((sign * (null - value) <= 0).sum())  # null kept sets at least as good as the score's
    p = (1 + as_good) / (1 + len(null))
    label = UNINFORMATIVE if not informative else (HOLDS if p <= SIGNIFICANCE else FAILS)
    return {"value": value, "gain": gain, "p": p, "verdict": label}


def judged_space(floor: dict[str, Any], null_runs: list[dict[str, float]], methods: dict[str, dict]) -> dict[str, Any]:
    """One feature space's results as ``verdicts`` reads them: floor, null (with its values), methods, gate."""
    space = {"floor": floor, "null": with_values(null_runs), "methods": methods}
    return {**space, "gate": space_gates(space)}


def space_gates(space: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The gate of every gated metric of one feature space's results (``floor`` and ``null`` entries)."""
    return {m: gate(space["floor"], space["null"], m) for m in GATED_METRICS if m in space["floor"]}


def verdicts(spaces: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every score's verdict on every gated metric in every space, from the report's numbers alone.

    Args:
        spaces: per feature space, ``floor`` and ``null`` (as ``noise_floor`` and ``with_values``
            return them) and ``methods``: each method's measured metrics.
    """
    out = []
    for space_name, space in spaces.items():
        gates = space_gates(space)
        for method, measured in space["methods"].items():
            for metric, g in gates.items():
                v = verdict(measured[metric], space["null"]["values"][metric], metric, g["informative"])
                out.append({"method": method, "space": space_name, "metric": metric, **v,
                            "distance_from_floor": g["distance"]})  # fmt: skip
    return out
