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


def test_a_text_engine_with_vanilla_cfg_is_their_guided_euler_loop():
    """Prompts through the conditioner; uc: the empty prompt with the text embedder zeroed; one call on [x; x]."""
    import math

    from genunc_lightning.adapters.base import Condition
    from tests.sgm_double import FakeTextDiffusionEngine

    torch.manual_seed(0)
    engine = FakeTextDiffusionEngine().eval()
    ad = SGMAdapter(engine, (2, 4, 4), steps=5, guidance_scale=4.0)
    assert ad.takes_prompts
    prompts, seeds = ("a cat", "a dog"), torch.tensor([5, 6])
    ours = ad.sample(seeds, Condition(torch.tensor([0, 1]), prompts=prompts))
    # VanillaCFG written out: c_in = cat(uc, c) per key, D on [x; x], x_u + w (x_c − x_u), Euler over the σ grid
    c = engine.conditioner({"txt": list(prompts)})
    uc = engine.conditioner({"txt": ["", ""]}, force_zero_embeddings=["txt"])
    sigmas = engine.denoiser.sigmas
    idx = torch.linspace(len(sigmas) - 1, 0, 5, dtype=torch.float64).round().long().tolist()
    schedule = [sigmas[i] for i in idx] + [torch.zeros(())]
    x = torch.stack([torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    x = x * math.sqrt(1 + float(schedule[0]) ** 2)
    with torch.no_grad():
        for sigma, sigma_next in zip(schedule[:-1], schedule[1:], strict=True):
            both = engine.denoiser(engine.model, torch.cat([x, x]), sigma.expand(4),
                                   {"crossattn": torch.cat([uc["crossattn"], c["crossattn"]])})  # fmt: skip
            x_u, x_c = both.chunk(2)
            x = x + (x - (x_u + 4.0 * (x_c - x_u))) / sigma * (sigma_next - sigma)
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="set null_class"):
        SGMAdapter(FakeDiffusionEngine(), (2, 4, 4), num_classes=3, guidance_scale=2.0)
