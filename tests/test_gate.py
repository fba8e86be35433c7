"""The noise-floor gate and the computed verdicts (issue 12), KID against torchmetrics, pixel PCA against sklearn."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from genunc_lightning.evaluation import Method
from genunc_lightning.evaluation.gate import (
    FAILS,
    HOLDS,
    UNINFORMATIVE,
    gate,
    judged_space,
    noise_floor,
    verdict,
    verdicts,
)
from genunc_lightning.evaluation.measurement import ReferenceMeasure
from genunc_lightning.evaluation.selection import random_kept_sets
from genunc_lightning.experiments.sweep import sign_test, trend_test
from genunc_lightning.metrics.functional import kernel_distance


class Flatten(nn.Module):
    """A fixed random projection of images: a stand-in feature extractor."""

    def __init__(self, d_in=64, d=8):
        super().__init__()
        self.proj = nn.Linear(d_in, d)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(3))

    def forward(self, x):
        return self.proj(x.flatten(1).float())


def test_kernel_distance_is_torchmetrics_kid_with_feature_extractor():
    from torchmetrics.image.kid import KernelInceptionDistance

    g = torch.Generator().manual_seed(0)
    real_images, fake_images = torch.rand(120, 1, 8, 8, generator=g), torch.rand(50, 1, 8, 8, generator=g) ** 2
    extractor = Flatten()
    metric = KernelInceptionDistance(feature=extractor, subsets=4, subset_size=50)
    metric.update(real_images, real=True)
    metric.update(fake_images, real=False)
    torch.manual_seed(7)
    expected, _ = metric.compute()
    # Replay its subset draws: per subset, a permutation of the real set, then one of the fake set (all 50 used).
    torch.manual_seed(7)
    real, fake = extractor(real_images).detach(), extractor(fake_images).detach()
    ours = []
    for _ in range(4):
        subset = real[torch.randperm(120)[:50]]
        torch.randperm(50)
        ours.append(kernel_distance(subset, fake))
    assert torch.stack(ours).mean().item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-7)


def test_kernel_distance_of_unequal_sets_matches_a_numpy_brute_force():
    from genunc_lightning.metrics.functional import kernel_within

    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(30, 5, generator=g), torch.randn(20, 5, generator=g) + 0.5
    x, y = real.double().numpy(), fake.double().numpy()

    def k(a, b):
        return (a @ b / 5 + 1) ** 3

    xx = np.mean([k(x[i], x[j]) for i in range(30) for j in range(30) if i != j])
    yy = np.mean([k(y[i], y[j]) for i in range(20) for j in range(20) if i != j])
    xy = np.mean([k(a, b) for a in x for b in y])
    assert kernel_distance(real, fake).item() == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    # either set's own term computed once, for a set that meets many others
    cached = kernel_distance(real, fake, within_real=kernel_within(real), within_fake=kernel_within(fake))
    assert cached.item() == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_pixel_pca_matches_sklearn():
    from sklearn.decomposition import PCA

    from genunc_lightning.encoders import PixelPCA

    x = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    ours = PixelPCA(x, components=6)
    reference = PCA(6).fit(x.flatten(1).double().numpy())
    got, want = ours(x).double().numpy(), reference.transform(x.flatten(1).double().numpy())
    np.testing.assert_allclose(np.abs(got), np.abs(want), atol=1e-5)  # components agree up to sign
    np.testing.assert_allclose(ours.explained_variance_ratio, reference.explained_variance_ratio_, rtol=1e-6)
    with pytest.raises(ValueError, match="components"):
        PixelPCA(x, components=65)


def test_verdict_counts_null_sets_at_least_as_good():
    null = [10.0, 11.0, 12.0, 13.0, 14.0] * 40  # 200 kept sets
    better = verdict(9.0, null, "fid", informative=True)  # lower FID than every null set
    assert better["p"] == pytest.approx(1 / 201) and better["verdict"] == HOLDS and better["gain"] > 0
    tied = verdict(10.0, null, "fid", informative=True)  # 40 null sets as good
    assert tied["p"] == pytest.approx(41 / 201) and tied["verdict"] == FAILS
    # precision: higher is better, so the sign flips
    assert verdict(0.9, [0.5, 0.6] * 100, "precision", informative=True)["verdict"] == HOLDS
    assert verdict(0.4, [0.5, 0.6] * 100, "precision", informative=True)["gain"] < 0
    assert verdict(9.0, null, "fid", informative=False)["verdict"] == UNINFORMATIVE


def test_gate_needs_the_null_beyond_the_floors_quantile_in_the_worse_direction():
    values = np.random.default_rng(0).gamma(0.5, 2.0, size=200)  # a skewed floor, as FID's is
    precision = 1.0 - values / 100
    floor = {"fid": values.mean(), "fid_std": values.std(ddof=1), "precision": precision.mean(),
             "precision_std": precision.std(ddof=1)}  # fmt: skip
    floor["values"] = {"fid": list(values), "precision": list(precision)}
    q = np.quantile(values, 0.99)  # numpy's linear interpolation, as torch.quantile's default
    g = gate(floor, {"fid": q + 1e-6, "fid_std": 0.1}, "fid")
    assert g["informative"] and g["threshold"] == pytest.approx(q, rel=1e-12)
    assert g["distance"] == pytest.approx((q + 1e-6 - values.mean()) / values.std(ddof=1))
    assert not gate(floor, {"fid": q - 1e-6, "fid_std": 0.1}, "fid")["informative"]
    # 3 floor stds above the mean is not enough on this skewed floor: the quantile decides, not d
    three_stds = values.mean() + 3 * values.std(ddof=1)
    assert three_stds < q and not gate(floor, {"fid": three_stds, "fid_std": 0.1}, "fid")["informative"]
    assert not gate(floor, {"fid": 0.0, "fid_std": 0.1}, "fid")["informative"]  # better than real: no test
    # precision: higher is better, so the null must sit below the floor's 0.01 quantile
    low = np.quantile(precision, 0.01)
    assert gate(floor, {"precision": low - 1e-6, "precision_std": 0.01}, "precision")["informative"]
    assert not gate(floor, {"precision": low + 1e-6, "precision_std": 0.01}, "precision")["informative"]


def test_the_floor_measures_real_sets_against_the_fixed_reference():
    """Every floor draw is a real set of K measured against the one reference the null uses (scipy FID)."""
    from scipy import linalg

    g = torch.Generator().manual_seed(4)
    reference, heldout = torch.randn(120, 3, generator=g), torch.randn(90, 3, generator=g) * 1.2
    floor = noise_floor(reference, heldout, kept_size=40, draws=5, k=3, kid_subsets=0, seed=11)
    perm = torch.Generator().manual_seed(11)
    for value in floor["values"]["fid"]:
        real = heldout[torch.randperm(90, generator=perm)[:40]].double().numpy()
        ref = reference.double().numpy()
        mu1, mu2, c1, c2 = ref.mean(0), real.mean(0), np.cov(ref, rowvar=False), np.cov(real, rowvar=False)
        fid = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * linalg.sqrtm(c1 @ c2).real)
        assert value == pytest.approx(fid, rel=1e-4, abs=1e-6)
    assert "kid" not in floor["values"] and floor["subsets"] == 5
    with pytest.raises(ValueError, match="real sets of 100"):
        noise_floor(reference, heldout, kept_size=100)


def _small_run(failure_share, seed=0, n=240, keep=200, d=4):
    """Held-out real features, and n model samples of which ``failure_share`` sit far off the real data."""
    g = torch.Generator().manual_seed(seed)
    heldout = torch.randn(800, d, generator=g)
    samples = torch.randn(n, d, generator=g)
    failures = torch.rand(n, generator=g) < failure_share
    samples[failures] += 4.0
    detector = samples.norm(dim=1) + 0.3 * torch.randn(n, generator=g)  # an uncertainty that sees the failures
    blind = torch.randn(n, generator=g)  # one that does not
    floor = noise_floor(heldout[:300], heldout[300:], kept_size=keep, draws=60, k=3, kid_subsets=3)
    measure = ReferenceMeasure(heldout[:300], samples, 3, {"failure": failures}, kid_subsets=3, kid_subset_size=keep)
    columns, classes = {"detector": detector, "blind": blind}, torch.full((n,), -1)
    null = [measure(i) for i in random_kept_sets(n, keep, 100, torch.Generator().manual_seed(1))]
    return {
        "features": judged_space(floor, null, {c: measure(Method((c,)).keep(columns, classes, keep)) for c in columns})
    }


def test_small_run_with_failures_is_informative_and_separates_the_scores():
    report = _small_run(failure_share=0.15)
    assert all(report["features"]["gate"][m]["informative"] for m in ("fid", "kid", "precision"))
    found = {(v["method"], v["metric"]): v for v in verdicts(report)}
    for metric in ("fid", "kid", "precision"):
        assert found[("detector", metric)]["verdict"] == HOLDS
        assert found[("blind", metric)]["verdict"] == FAILS
    # the verdicts come from the report's numbers alone: the same after a JSON round trip
    assert verdicts(json.loads(json.dumps(report))) == verdicts(report)


def test_small_run_at_the_floor_is_uninformative_whatever_the_score():
    report = _small_run(failure_share=0.0)  # the model samples the real distribution
    gates = report["features"]["gate"]
    assert not any(g["informative"] for g in gates.values()), gates
    assert {v["verdict"] for v in verdicts(report)} == {UNINFORMATIVE}


def test_floor_refuses_a_kept_size_above_the_heldout_data():
    with pytest.raises(ValueError, match="hold out more data"):
        noise_floor(torch.randn(100, 3), torch.randn(40, 3), kept_size=50)


def test_trend_and_sign_tests():
    rising = trend_test(list(range(10)), [0.1 * i + 0.01 * (-1) ** i for i in range(10)], permutations=2000)
    assert rising["rho"] > 0.9 and rising["p"] < 0.01
    falling = trend_test(list(range(10)), list(range(10, 0, -1)), permutations=2000)
    assert falling["p"] > 0.95
    assert sign_test([1.0, 2.0, 3.0])["p"] == pytest.approx(1 / 8)
    assert sign_test([1.0, -2.0])["p"] == pytest.approx(3 / 4)
