"""From scores to decisions: multiple-comparison corrections and a reject threshold with a guarantee.

Pure functions of p-values, scores and labels (float64, no model, no files):

- ``holm`` (family-wise error) and ``benjamini_hochberg`` (false discovery rate): adjusted p-values
  and which hypotheses are rejected, for reports that test many claims at once.
- ``reject_threshold``: given a labelled calibration set (each sample's score and whether it failed),
  the loosest threshold τ such that, with probability at least 1 − δ over the calibration set, the
  failure rate among the samples kept (score ≤ τ) is at most α. It follows Learn-then-Test (Angelopoulos,
  Bates, Candès, Jordan, Lei 2021): each candidate τ is a hypothesis "its kept set's failure rate
  exceeds α", tested with the exact binomial p-value of the failures among its kept calibration
  samples, in a fixed sequence from the strictest candidate to the loosest, stopping at the first that
  is not rejected. Fixed-sequence testing controls the family-wise error at δ, which is the guarantee.

The guarantee assumes that the calibration samples and the samples the threshold is applied to are
exchangeable draws from the same model and sampler (the same run settings), and that the labels of the
calibration samples are correct.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

DEFAULT_CANDIDATES = 20  # kept fractions 1/20, 2/20, …, 1 of the calibration set


def _as_p_values(p_values: Sequence[float]) -> torch.Tensor:
    p = torch.as_tensor(list(p_values), dtype=torch.float64)
    if p.numel() == 0:
        raise ValueError("Give at least one p-value.")
    if not torch.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"p-values must lie in [0, 1]; got {p.tolist()}.")
    return p


def holm(p_values: Sequence[float], alpha: float = 0.05) -> dict[str, list]:
    """Holm's step-down correction (family-wise error ≤ ``alpha``, any dependence between the tests).

    Returns:
        ``adjusted``: Holm-adjusted p-values (in the input's order), and ``rejected``: adjusted ≤ alpha.
    """
    p = _as_p_values(p_values)
    m = p.numel()
    order = p.argsort(stable=True)
    steps = (m - torch.arange(m, dtype=torch.float64)) * p[order]  # (m − i) · p_(i), i from 0
    adjusted_sorted = torch.cummax(steps, 0).values.clamp(max=1.0)
    adjusted = torch.empty_like(p)
    adjusted[order] = adjusted_sorted
    return {"adjusted": adjusted.tolist(), "rejected": (adjusted <= alpha).tolist()}


def benjamini_hochberg(p_values: Sequence[float], q: float = 0.05) -> dict[str, list]:
    """Benjamini–Hochberg step-up correction: false discovery rate ≤ ``q`` (independent or positively dependent tests).

    Returns:
        ``adjusted``: BH-adjusted p-values (q-values, in the input's order), and ``rejected``: adjusted ≤ q.
    """
    p = _as_p_values(p_values)
    m = p.numel()
    order = p.argsort(stable=True)
    ranks = torch.arange(1, m + 1, dtype=torch.float64)
    steps = p[order] * m / ranks
    adjusted_sorted = torch.flip(torch.cummin(torch.flip(steps, [0]), 0).values, [0]).clamp(max=1.0)
    adjusted = torch.empty_like(p)
    adjusted[order] = adjusted_sorted
    return {"adjusted": adjusted.tolist(), "rejected": (adjusted <= q).tolist()}


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) ≤ k), exactly (a sum of log-space terms, float64)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)
        for i in range(k + 1)
    ]
    top = max(log_terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in log_terms))


def binomial_upper_bound(failures: int, n: int, delta: float) -> float:
    """The one-sided Clopper–Pearson upper bound: the largest rate r with P(Bin(n, r) ≤ failures) ≥ δ."""
    if n == 0:
        return 1.0
    if failures >= n:
        return 1.0
    lo, hi = failures / n, 1.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if binomial_cdf(failures, n, mid) >= delta:
            lo = mid
        else:
            hi = mid
    return hi


def min_kept_for_guarantee(alpha: float, delta: float) -> int:
    """The fewest kept calibration samples that can support the guarantee (all of them without failure)."""
    return math.ceil(math.log(delta) / math.log1p(-alpha))


def reject_threshold(
    scores: torch.Tensor,
    failures: torch.Tensor,
    alpha: float = 0.1,
    delta: float = 0.1,
    candidates: int = DEFAULT_CANDIDATES,
) -> dict[str, Any]:
    """The loosest threshold whose kept set's failure rate is ≤ ``alpha`` with confidence 1 − ``delta``.

    Args:
        scores: [n] calibration scores; higher = more uncertain (rejected first). +inf is allowed.
        failures: [n] booleans, whether each calibration sample failed.
        alpha: the failure rate allowed among kept samples.
        delta: the probability, over the calibration set, that the guarantee fails.
        candidates: the candidate thresholds are the calibration scores at kept fractions
            1/candidates, 2/candidates, …, 1, tested from the strictest.

    Returns:
        ``threshold`` (keep samples with score ≤ it; ``None`` when no candidate meets the guarantee),
        ``kept_fraction`` and ``kept_failure_rate`` on the calibration set at that threshold, its
        ``failure_rate_upper_bound`` (Clopper–Pearson at δ), the ``tests`` made in order (kept count,
        failures, p-value, rejected), and ``min_kept``: the fewest kept samples that could ever meet it.

    Raises:
        ValueError: mismatched or empty inputs, NaN scores, or alpha/delta outside (0, 1).
    """
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    failures = torch.as_tensor(failures).flatten().bool()
    if scores.numel() == 0 or scores.numel() != failures.numel():
        raise ValueError(f"Give one failure label per score; got {scores.numel()} scores, {failures.numel()} labels.")
    if torch.isnan(scores).any():
        raise ValueError("Scores of the calibration set must not be NaN.")
    if not (0 < alpha < 1 and 0 < delta < 1):
        raise ValueError(f"alpha and delta must lie in (0, 1); got {alpha} and {delta}.")
    if candidates < 1:
        raise ValueError(f"candidates must be at least 1, got {candidates}.")
    n = scores.numel()
    order = scores.argsort(stable=True)
    sorted_scores, sorted_failures = scores[order], failures[order]
    cumulative = sorted_failures.double().cumsum(0)
    min_kept = min_kept_for_guarantee(alpha, delta)
    tests, chosen = [], None
    for j in range(1, candidates + 1):
        kept = math.floor(j * n / candidates)
        if kept < max(1, min_kept):
            continue  # fixed in advance by n, alpha and delta alone: cannot be rejected, not tested
        tau = float(sorted_scores[kept - 1])
        kept = int((sorted_scores <= tau).sum())  # ties at τ are kept with it
        failed = int(cumulative[kept - 1])
        p = binomial_cdf(failed, kept, alpha)
        rejected = p <= delta
        tests.append({"kept": kept, "failures": failed, "threshold": tau, "p": p, "rejected": rejected})
        if not rejected:
            break
        chosen = tests[-1]
    result: dict[str, Any] = {"alpha": alpha, "delta": delta, "calibration": n, "min_kept": min_kept, "tests": tests}
    if chosen is None:
        return {**result, "threshold": None, "kept_fraction": 0.0, "kept_failure_rate": None,
                "failure_rate_upper_bound": None}  # fmt: skip
    return {
        **result,
        "threshold": chosen["threshold"],
        "kept_fraction": chosen["kept"] / n,
        "kept_failure_rate": chosen["failures"] / chosen["kept"],
        "failure_rate_upper_bound": binomial_upper_bound(chosen["failures"], chosen["kept"], delta),
    }


def sign_flip_p(differences: Sequence[float]) -> float:
    """One-sided exact sign-flip (randomisation) p-value of "the mean of ``differences`` is above 0".

    Under the null each difference is as likely positive as negative (a symmetric distribution around
    0, independent across units), so all 2^R sign patterns are equally likely; p is the share whose mean
    is at least the observed one. Its smallest value is 2^−R.

    Args:
        differences: one paired difference per independent unit (a model), R of them (R ≤ 24).
    """
    d = torch.as_tensor(list(differences), dtype=torch.float64)
    r = d.numel()
    if r == 0 or r > 24 or not torch.isfinite(d).all():
        raise ValueError(f"Give 1 to 24 finite differences; got {d.tolist()}.")
    patterns = torch.arange(2**r).unsqueeze(1).bitwise_right_shift(torch.arange(r)).bitwise_and(1)
    signs = 1.0 - 2.0 * patterns.double()  # every sign pattern, the identity (all +1) included
    means = (signs * d).mean(1)
    observed = d.mean()
    tolerance = 1e-12 * max(1.0, float(d.abs().max()))
    return float((means >= observed - tolerance).double().mean())
