"""Baselines: each tested for its defining property, and compared by `genunc evaluate` unchanged."""

import math

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

from genunc_lightning.adapters import FlowMatchingAdapter, GaussianDiffusionAdapter
from genunc_lightning.data import GaussianGrid2D, SeedDataModule
from genunc_lightning.evaluation import Evaluation
from genunc_lightning.laplace import DiagonalLaplacePosterior, fisher_batch
from genunc_lightning.models import MLPDenoiser
from genunc_lightning.seeding import example_seeds
from genunc_lightning.uncertainty import (
    AleatoricUncertainty,
    BayesDiff,
    DeepEnsemble,
    GenerativeUncertaintyModule,
    PixelLikelihood,
    ScoredSampleWriter,
)

SEEDS = torch.arange(6)


def ddim_toy(hidden=32, steps=10, seed=0):
    torch.manual_seed(seed)
    model = MLPDenoiser(hidden=hidden, depth=2)
    adapter = GaussianDiffusionAdapter(model, "out", (2,), sampler="ddim", steps=steps)
    fb = fisher_batch(adapter, torch.randn(64, 2), [example_seeds(0, range(64))])
    post = DiagonalLaplacePosterior.fit(model.out, "out", fb.diag, 64, float(fb.squared_residual_sum), fb.num_residuals)
    return adapter, post


def test_bayesdiff_is_zero_without_posterior_variance_and_grows_with_it():
    adapter, post = ddim_toy()
    bd = BayesDiff(every=3, posterior_samples=8, mc_samples=8)
    scores = [bd.score(adapter, post.with_scale(temperature=t), SEEDS, None, 10) for t in (0.01, 1.0, 100.0)]
    assert (scores[0] > 0).all()
    assert (scores[1] > scores[0]).all() and (scores[2] > scores[1]).all()
    zero = bd.score(adapter, post.with_scale(temperature=0.0), SEEDS, None, 10)
    assert torch.equal(zero, torch.zeros(6, dtype=torch.float64))
    assert bd.negative_fraction == 0.0  # no variance, no Monte Carlo term, nothing clamped


class ConstantEps(nn.Module):
    """ε does not depend on x: the output is the last layer's bias (its input is all zeros)."""

    def __init__(self):
        super().__init__()
        self.out = nn.Linear(4, 2)

    def forward(self, x, t):
        return self.out(torch.zeros(x.shape[0], 4, dtype=x.dtype))


def test_bayesdiff_recursion_matches_a_direct_computation():
    # With ε independent of x and zero under the pretrained weights (zero bias), the Monte Carlo
    # covariance mean_i(x_i·ε) − E[x]·mean_i ε is exactly 0 and Var[ε] is the bias variance at every
    # step, so the final variance is Σ_j c_j²·Var[ε]·Π_{later steps} r² (Var[ε]: the MC estimate).
    from genunc_lightning.adapters.gaussian import sampling_timesteps

    model = ConstantEps()
    torch.nn.init.zeros_(model.out.bias)
    adapter = GaussianDiffusionAdapter(model, "out", (2,), sampler="ddim", steps=6)
    post = DiagonalLaplacePosterior(
        "out", "Linear", {"weight": model.out.weight.detach(), "bias": model.out.bias.detach()},
        {"weight": torch.ones(2, 4), "bias": torch.full((2,), 3.0)}, 1, sigma=1.0, prior_precision=1.0,
    )  # fmt: skip
    bd = BayesDiff(every=1, posterior_samples=50, mc_samples=4, seed=3)
    got = bd.score(adapter, post, SEEDS[:2], None, 6)
    bias = post.sample(50, torch.Generator().manual_seed(3))["bias"].double()
    eps_var = bias.var(0, unbiased=False)  # per output dimension
    a = adapter.alphas_cumprod.tolist()
    ts = sampling_timesteps(1000, 6).tolist() + [-1]
    var = torch.zeros(2, dtype=torch.float64)
    for t, t_prev in zip(ts[:-1], ts[1:], strict=True):
        a_prev = a[t_prev] if t_prev >= 0 else 1.0
        r = math.sqrt(a_prev / a[t])
        c = math.sqrt(1 - a_prev) - r * math.sqrt(1 - a[t])
        var = r**2 * var + c**2 * eps_var
    torch.testing.assert_close(got, var.sum().expand(2), rtol=1e-9, atol=0)


class IgnoresInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.out = nn.Linear(3, 2)

    def forward(self, x, t):
        return self.out(torch.ones(x.shape[0], 3))


def test_au_is_zero_for_a_denoiser_that_ignores_its_input():
    adapter = GaussianDiffusionAdapter(IgnoresInput(), "out", (2,), sampler="ddim", steps=8)
    assert torch.equal(AleatoricUncertainty(members=5).score(adapter, None, SEEDS, None, 8), torch.zeros(6).double())
    adapter, _ = ddim_toy()
    au = AleatoricUncertainty(members=5, every=2).score(adapter, None, SEEDS, None, 10)
    assert (au > 0).all()


def test_ensemble_of_identical_members_gives_the_minimum_entropy(tmp_path):
    adapter, _ = ddim_toy()
    for i in range(3):
        torch.save(adapter.denoiser.state_dict(), tmp_path / f"m{i}.pt")
    ensemble = DeepEnsemble([str(tmp_path / f"m{i}.pt") for i in range(3)])
    module = GenerativeUncertaintyModule(adapter, ensemble, [PixelLikelihood(noise_var=1e-3)])
    assert module.num_members == 3
    out = module.predict_step({"index": SEEDS, "seed": SEEDS, "class": torch.full((6,), -1)}, 0)
    expected = 0.5 * 2 * math.log(2 * math.pi * math.e * 1e-3)
    torch.testing.assert_close(
        out["scores"]["pixel"], torch.full((6,), expected, dtype=torch.float64), rtol=1e-15, atol=0
    )
    other, _ = ddim_toy(seed=1)
    torch.save(other.denoiser.state_dict(), tmp_path / "m3.pt")
    diverse = GenerativeUncertaintyModule(adapter, DeepEnsemble([str(tmp_path / "m3.pt")]), [PixelLikelihood()])
    scores = diverse.predict_step({"index": SEEDS, "seed": SEEDS, "class": torch.full((6,), -1)}, 0)["scores"]
    assert (scores["pixel"] > expected).all()


def test_bad_input_fails_before_sampling(tmp_path):
    adapter, post = ddim_toy()
    torch.save(MLPDenoiser(hidden=16, depth=2).state_dict(), tmp_path / "small.pt")
    with pytest.raises(ValueError, match="architecture"):
        GenerativeUncertaintyModule(adapter, DeepEnsemble([str(tmp_path / "small.pt")]))
    ddpm = GaussianDiffusionAdapter(adapter.denoiser, "out", (2,), sampler="ddpm", steps=10)
    with pytest.raises(ValueError, match="BayesDiff supports the deterministic DDIM sampler"):
        GenerativeUncertaintyModule(ddpm, post, baselines=[BayesDiff()])
    flow = FlowMatchingAdapter(adapter.denoiser, "out", (2,))
    with pytest.raises(ValueError, match="AU supports the deterministic DDIM sampler"):
        GenerativeUncertaintyModule(flow, post, baselines=[AleatoricUncertainty()])
    with pytest.raises(FileNotFoundError):
        DeepEnsemble([str(tmp_path / "missing.pt")])


def test_every_score_lands_in_one_table_and_evaluate_compares_them(tmp_path):
    adapter, post = ddim_toy()
    module = GenerativeUncertaintyModule(
        adapter, post, [PixelLikelihood()], num_members=2,
        baselines=[BayesDiff(every=5, posterior_samples=4, mc_samples=4), AleatoricUncertainty(members=4, every=5)],
    )  # fmt: skip
    writer = ScoredSampleWriter(str(tmp_path / "run"))
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[writer])
    trainer.predict(module, datamodule=SeedDataModule(60, 30), return_predictions=False)
    header = (tmp_path / "run" / "scores.csv").read_text().splitlines()[0]
    assert header == "index,seed,class,au,bayesdiff,pixel"
    report = Evaluation(str(tmp_path / "run"), GaussianGrid2D(num_points=200), keep=30, random_subsets=2,
                        fractions=[1.0]).run()  # fmt: skip
    assert {"au", "bayesdiff", "pixel", "realism", "rarity", "random"} <= set(report["results"])
