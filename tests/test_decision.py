"""Multiple-comparison corrections and the reject threshold with a guarantee (issue 23, item 6)."""

import math

import pytest
import torch
from scipy import stats

from genunc_lightning.evaluation.decision import (
    benjamini_hochberg,
    binomial_cdf,
    binomial_upper_bound,
    holm,
    min_kept_for_guarantee,
    reject_threshold,
    sign_flip_p,
)

P = [0.01, 0.04, 0.03, 0.005]


def test_holm_against_a_hand_computation():
    # Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> running max 0.06.
    out = holm(P, alpha=0.05)
    assert out["adjusted"] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert out["rejected"] == [True, False, False, True]
    assert holm([0.3, 0.9], alpha=0.05)["adjusted"] == pytest.approx([0.6, 0.9])


def test_benjamini_hochberg_against_a_hand_computation():
    # Sorted: 0.005·4/1 = 0.02, 0.01·4/2 = 0.02, 0.03·4/3 = 0.04, 0.04·4/4 = 0.04 (running min from the top).
    out = benjamini_hochberg(P, q=0.05)
    assert out["adjusted"] == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert out["rejected"] == [True, True, True, True]
    assert benjamini_hochberg([0.02, 0.5], q=0.05)["rejected"] == [True, False]


@pytest.mark.parametrize("bad", [[], [0.2, 1.5], [float("nan")]])
def test_corrections_refuse_what_is_not_a_p_value(bad):
    with pytest.raises(ValueError):
        holm(bad)


@pytest.mark.parametrize(("k", "n", "p"), [(0, 25, 0.1), (3, 40, 0.1), (17, 200, 0.1), (480, 5000, 0.1), (5, 5, 0.3)])
def test_binomial_tail_and_bound_against_scipy(k, n, p):
    assert binomial_cdf(k, n, p) == pytest.approx(stats.binom.cdf(k, n, p), rel=1e-9, abs=1e-300)
    if k < n:  # Clopper–Pearson's one-sided upper bound is a beta quantile
        assert binomial_upper_bound(k, n, 0.1) == pytest.approx(stats.beta.ppf(0.9, k + 1, n - k), rel=1e-9)


def draw_calibration(n, generator):
    """Scores uniform on [0, 1]; a sample with score s fails with probability s, so among the kept
    (score ≤ τ) the failure rate is exactly τ / 2."""
    scores = torch.rand(n, generator=generator, dtype=torch.float64)
    return scores, torch.rand(n, generator=generator, dtype=torch.float64) < scores


def naive_threshold(scores, failures, alpha):
    """The loosest calibration threshold whose empirical failure rate is ≤ alpha: no confidence at all."""
    order = scores.argsort()
    rate = failures[order].double().cumsum(0) / torch.arange(1, len(scores) + 1)
    ok = (rate <= alpha).nonzero()
    return float(scores[order][ok.max()]) if len(ok) else None


def test_the_threshold_keeps_its_guarantee_on_a_known_failure_rate():
    alpha, delta, repeats = 0.1, 0.1, 300
    g = torch.Generator().manual_seed(0)
    ours, naive, kept = [], [], []
    for _ in range(repeats):
        scores, failures = draw_calibration(2000, g)
        result = reject_threshold(scores, failures, alpha, delta)
        true_rate = result["threshold"] / 2 if result["threshold"] is not None else 0.0
        ours.append(true_rate > alpha)
        kept.append(result["kept_fraction"])
        naive.append(naive_threshold(scores, failures, alpha) / 2 > alpha)
    # The guarantee: P(failure rate among kept > alpha) <= delta; 3 binomial stds of slack for 300 repeats.
    assert sum(ours) / repeats <= delta + 3 * math.sqrt(delta * (1 - delta) / repeats)
    assert sum(naive) / repeats > 0.3  # the check can fail: a threshold without confidence breaks it often
    # Not vacuous: an oracle keeps 20% (τ = 0.2); ours keeps 12.5% on average (3% violations, naive 54%).
    assert sum(kept) / repeats >= 0.1


def test_too_few_calibration_samples_give_no_threshold_and_say_how_many_are_needed():
    scores, failures = torch.linspace(0, 1, 15), torch.zeros(15, dtype=torch.bool)
    result = reject_threshold(scores, failures, alpha=0.1, delta=0.1)
    assert result["threshold"] is None and result["min_kept"] == min_kept_for_guarantee(0.1, 0.1) == 22
    full = reject_threshold(torch.linspace(0, 1, 40), torch.zeros(40, dtype=torch.bool), alpha=0.1, delta=0.1)
    assert full["threshold"] == 1.0 and full["kept_fraction"] == 1.0  # no failure at all: keep everything


def test_the_threshold_refuses_bad_input():
    with pytest.raises(ValueError, match="one failure label per score"):
        reject_threshold(torch.rand(5), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"alpha and delta must lie in \(0, 1\)"):
        reject_threshold(torch.rand(5), torch.zeros(5, dtype=torch.bool), alpha=0.0)


def test_sign_flip_p_against_an_enumeration_by_hand():
    import itertools

    d = [2.1, 0.4, -0.3, 1.7, 0.9]
    patterns = list(itertools.product([1, -1], repeat=len(d)))
    as_large = sum(sum(s * x for s, x in zip(signs, d, strict=True)) >= sum(d) - 1e-12 for signs in patterns)
    assert sign_flip_p(d) == as_large / 32
    assert sign_flip_p([1.0] * 8) == 1 / 256  # all positive: the smallest p, 2^-R
    assert sign_flip_p([-1.0, -2.0, -0.5]) == 1.0  # all negative: every pattern is at least as large
    with pytest.raises(ValueError):
        sign_flip_p([])
