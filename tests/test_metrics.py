"""Metrics against independent references: torchmetrics FID, torch-fidelity prc, numpy; and DDP."""

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from genunc_lightning.metrics import (
    FrechetDistance,
    PrecisionRecall,
    RarityScore,
    RealismScore,
    frechet_distance_features,
    precision_recall,
    rarity_score,
    realism_score,
)
from genunc_lightning.metrics.functional import auroc, average_ranks


def feature_sets(n_real=300, n_fake=200, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(n_real, d, generator=g)
    fake = 1.2 * torch.randn(n_fake, d, generator=g) + 0.3
    return real, fake


class Identity(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.num_features = d

    def forward(self, x):
        return x


def test_frechet_distance_matches_torchmetrics_fid():
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = feature_sets(d=32)
    ref = FrechetInceptionDistance(feature=Identity(32))
    ref.update(real.double(), real=True)
    ref.update(fake.double(), real=False)
    ours = FrechetDistance()
    for chunk in real.split(64):
        ours.update(chunk, real=True)
    ours.update(fake, real=False)
    expected = ref.compute().item()
    assert ours.compute().item() == pytest.approx(expected, rel=1e-4)
    assert frechet_distance_features(real, fake).item() == pytest.approx(expected, rel=1e-4)
    assert frechet_distance_features(real, real).abs().item() < 1e-8


def test_frechet_distance_of_gaussians_has_the_closed_form():
    # Diagonal covariances: d² = ‖μ1 − μ2‖² + Σ (s1 − s2)² for standard deviations s.
    g = torch.Generator().manual_seed(1)
    s1, s2 = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.5, 1.0, 0.5])
    a = torch.randn(200000, 3, generator=g, dtype=torch.float64) * s1
    b = torch.randn(200000, 3, generator=g, dtype=torch.float64) * s2 + 1.0
    expected = 3.0 + ((s1 - s2) ** 2).sum().item()
    assert frechet_distance_features(a, b).item() == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("chunk", [7, 4096])
def test_precision_recall_match_torch_fidelity(chunk):
    from torch_fidelity.metric_prc import prc_features_to_metric

    real, fake = feature_sets()
    ref = prc_features_to_metric(
        fake, real, prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False, verbose=False
    )
    precision, recall = precision_recall(real, fake, k=3, chunk=chunk)
    assert 0 < ref["precision"] < 1 and 0 < ref["recall"] < 1
    assert precision.item() == pytest.approx(ref["precision"], abs=1e-6)
    assert recall.item() == pytest.approx(ref["recall"], abs=1e-6)
    metric = PrecisionRecall(k=3)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert metric.compute()["precision"].item() == pytest.approx(ref["precision"], abs=1e-6)


def test_precomputed_reference_radii_give_the_same_values():
    from genunc_lightning.metrics import knn_radii

    real, fake = feature_sets()
    radii = knn_radii(real, 3)
    assert precision_recall(real, fake, real_radii=radii) == precision_recall(real, fake)
    torch.testing.assert_close(realism_score(real, fake, real_radii=radii), realism_score(real, fake))
    torch.testing.assert_close(rarity_score(real, fake, real_radii=radii), rarity_score(real, fake))
    with pytest.raises(ValueError, match="real_radii has shape"):
        rarity_score(real, fake, real_radii=radii[:5])


def numpy_radii(x, k):
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, k]


def test_realism_and_rarity_match_numpy():
    real, fake = feature_sets(n_real=120, n_fake=90, d=5)
    r, f = real.double().numpy(), fake.double().numpy()
    radii = numpy_radii(r, 3)
    d = np.sqrt(((f[:, None] - r[None]) ** 2).sum(-1))
    kept = radii <= np.quantile(radii, 0.5)
    realism = (radii[kept][None] / d[:, kept]).max(1)
    rarity = np.where(d <= radii[None], radii[None], np.inf).min(1)
    np.testing.assert_allclose(realism_score(real.double(), fake.double(), k=3).numpy(), realism, rtol=1e-10)
    np.testing.assert_allclose(rarity_score(real.double(), fake.double(), k=3).numpy(), rarity, rtol=1e-10)
    assert np.isinf(rarity).any() and np.isfinite(rarity).any()  # both cases exercised


def test_realism_prefers_points_on_the_manifold():
    real = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    fake = torch.stack([torch.zeros(4), torch.full((4,), 5.0)])
    scores = realism_score(real, fake)
    assert scores[0] > 1 > scores[1]
    rarity = rarity_score(real, fake)
    assert torch.isfinite(rarity[0]) and torch.isinf(rarity[1])


def test_bad_inputs():
    real, fake = feature_sets()
    with pytest.raises(ValueError, match="empty"):
        precision_recall(real, fake[:0])
    bad = fake.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf values \(rows \[3\]\)"):
        precision_recall(real, bad)
    with pytest.raises(ValueError, match="Feature dimensions differ: real 16, fake 8"):
        rarity_score(real, fake[:, :8])
    with pytest.raises(ValueError, match="k = 3 needs at least 4"):
        realism_score(real[:3], fake)
    with pytest.raises(ValueError, match="at least 2"):
        m = FrechetDistance()
        m.update(real, real=True)
        m.update(fake[:1], real=False)
        m.compute()


def _ddp_worker(rank, world, path, real, fake):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", "29533"
    dist.init_process_group("gloo", rank=rank, world_size=world)
    metrics = {
        "fd": FrechetDistance(),
        "pr": PrecisionRecall(),
        "realism": RealismScore(),
        "rarity": RarityScore(),
    }
    out = {}
    for name, m in metrics.items():
        m.update(real[rank::world], real=True)
        m.update(fake[rank::world], real=False)
        out[name] = m.compute()
    if rank == 0:
        torch.save(out, path)
    dist.destroy_process_group()


def test_each_metric_gives_the_same_value_from_two_ddp_processes(tmp_path, ddp_start_method):
    real, fake = feature_sets(n_real=201, n_fake=151)
    path = str(tmp_path / "ddp.pt")
    mp.start_processes(_ddp_worker, args=(2, path, real, fake), nprocs=2, join=True, start_method=ddp_start_method)
    two = torch.load(path)
    # Under DDP the fake set is gathered rank-major: rank 0's rows, then rank 1's.
    order = torch.cat([torch.arange(151)[0::2], torch.arange(151)[1::2]])
    real_order = torch.cat([real[0::2], real[1::2]])
    assert two["fd"].item() == pytest.approx(frechet_distance_features(real, fake).item(), rel=1e-9)
    p, r = precision_recall(real, fake)
    assert two["pr"]["precision"].item() == pytest.approx(p.item(), abs=1e-6)
    assert two["pr"]["recall"].item() == pytest.approx(r.item(), abs=1e-6)
    torch.testing.assert_close(two["realism"], realism_score(real_order, fake[order]))
    torch.testing.assert_close(two["rarity"], rarity_score(real, fake)[order])


def test_auroc_and_average_ranks_match_scipy_and_sklearn_with_ties():
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (300,), generator=g).double()  # many ties
    scores[:3] = torch.tensor([float("inf"), -float("inf"), float("inf")])
    labels = torch.rand(300, generator=g) < 0.2
    np.testing.assert_allclose(average_ranks(scores).numpy(), rankdata(scores.numpy()) - 1, rtol=0, atol=1e-12)
    finite = torch.isfinite(scores)
    assert auroc(scores[finite], labels[finite]) == pytest.approx(
        roc_auc_score(labels[finite].numpy(), scores[finite].numpy()), abs=1e-12
    )
    assert auroc(labels.double(), labels) == 1.0 and auroc(-labels.double(), labels) == 0.0
    assert np.isnan(auroc(scores, torch.zeros(300, dtype=torch.bool)))


def test_precision_recall_against_a_fake_set_equals_updating_with_it_and_leaves_the_state():
    real, fake = feature_sets(d=16)
    held = PrecisionRecall(k=3)
    held.update(real, real=True)
    first = held.against(fake[:50])
    second = held.against(fake[50:])
    for part, got in ((fake[:50], first), (fake[50:], second)):
        fresh = PrecisionRecall(k=3)
        fresh.update(real, real=True)
        fresh.update(part, real=False)
        expected = fresh.compute()
        assert torch.equal(got["precision"], expected["precision"]) and torch.equal(got["recall"], expected["recall"])
    assert len(held.fake_features) == 0  # nothing was added to the metric's state
