"""Stability sgm DiffusionEngine through a faithful double."""

import pytest
import torch

from genunc_lightning import seeding
from genunc_lightning.adapters import SGMAdapter
from genunc_lightning.seeding import example_seeds
from tests.sgm_double import FakeDiffusionEngine


class JpgDataset(torch.utils.data.Dataset):
    def __init__(self, n=40):
        g = torch.Generator().manual_seed(0)
        self.images, self.labels = torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"jpg": self.images[i], "cls": self.labels[i]}


def adapter():
    torch.manual_seed(0)
    return SGMAdapter(FakeDiffusionEngine(), (2, 4, 4), num_classes=3, steps=6)


def test_residual_is_the_network_output_minus_the_noise():
    ad = adapter()
    engine, data = ad.denoiser, JpgDataset(4)
    batch = {"jpg": data.images, "cls": data.labels}
    seeds = example_seeds(0, range(4))
    got = ad.residual(batch, seeds)
    # Independently: the engine's network at (c_in·x, index of σ) minus the noise (EpsScaling: target ε).
    gens = seeding.generators(seeds, "cpu")
    idx = seeding.randint(gens, 1000, "cpu")
    noise = seeding.randn(gens, (2, 4, 4), "cpu")
    sigma = engine.denoiser.sigmas[idx].view(-1, 1, 1, 1)
    x = engine.encode_first_stage(batch["jpg"]) + sigma * noise
    out = engine.model(x / (sigma**2 + 1) ** 0.5, idx, engine.conditioner(batch))
    torch.testing.assert_close(got, out - noise, rtol=1e-4, atol=1e-4)


def test_fisher_matches_brute_force(assert_fisher_close):
    data = JpgDataset(5)
    assert_fisher_close(adapter(), {"jpg": data.images, "cls": data.labels}, rtol=1e-4, atol_scale=1e-8)


def test_same_seed_same_sample_and_end_to_end(tmp_path, fit_predict_evaluate):
    ad = adapter()
    seeds, classes = torch.arange(8), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    eight = ad.sample(seeds, classes)
    torch.testing.assert_close(ad.sample(seeds[5:6], classes[5:6])[0], eight[5], rtol=1e-4, atol=1e-5)
    report = fit_predict_evaluate(
        tmp_path, ad, JpgDataset(), JpgDataset().images, num_samples=20, batch_size=10, keep=10
    )
    assert {"pixel", "random"} <= set(report["results"])


def test_not_an_engine():
    with pytest.raises(TypeError, match="needs an sgm DiffusionEngine"):
        SGMAdapter(torch.nn.Linear(2, 2), (2, 4, 4))
