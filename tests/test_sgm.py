"""Stability sgm DiffusionEngine through a faithful double."""

import pytest
import torch
from lightning.pytorch import Trainer

from genunc_lightning import seeding
from genunc_lightning.adapters import SGMAdapter
from genunc_lightning.data import DiffusionDataModule, SeedDataModule
from genunc_lightning.evaluation import Evaluation
from genunc_lightning.laplace import FisherAccumulationCallback, LaplaceFitModule
from genunc_lightning.seeding import example_seeds
from genunc_lightning.uncertainty import GenerativeUncertaintyModule, PixelLikelihood, ScoredSampleWriter
from tests.sgm_double import FakeDiffusionEngine
from tests.test_fisher import assert_fisher_close

KW = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


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


def test_fisher_matches_brute_force():
    data = JpgDataset(5)
    assert_fisher_close(adapter(), {"jpg": data.images, "cls": data.labels}, rtol=1e-4, atol_scale=1e-8)


def test_same_seed_same_sample_and_end_to_end(tmp_path):
    ad = adapter()
    seeds, classes = torch.arange(8), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    eight = ad.sample(seeds, classes)
    torch.testing.assert_close(ad.sample(seeds[5:6], classes[5:6])[0], eight[5], rtol=1e-4, atol=1e-5)
    fisher = FisherAccumulationCallback(output=str(tmp_path / "p.safetensors"))
    Trainer(callbacks=[fisher], inference_mode=False, **KW).predict(
        LaplaceFitModule(ad), datamodule=DiffusionDataModule(JpgDataset(), batch_size=16), return_predictions=False
    )
    module = GenerativeUncertaintyModule(ad, str(tmp_path / "p.safetensors"), [PixelLikelihood()], num_members=2)
    Trainer(callbacks=[ScoredSampleWriter(str(tmp_path / "run"))], **KW).predict(
        module, datamodule=SeedDataModule(20, 10, num_classes=3), return_predictions=False
    )
    report = Evaluation(str(tmp_path / "run"), torch.utils.data.TensorDataset(JpgDataset().images),
                        reference_range=(-1.0, 1.0), keep=10, random_subsets=2, fractions=[1.0]).run()  # fmt: skip
    assert {"pixel", "random"} <= set(report["results"])


def test_not_an_engine():
    with pytest.raises(TypeError, match="needs an sgm DiffusionEngine"):
        SGMAdapter(torch.nn.Linear(2, 2), (2, 4, 4))
