"""Adapters: last-layer resolution, parameterisations, samplers and per-seed reproducibility."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from genunc_lightning.adapters import (
    FlowMatchingAdapter,
    GaussianDiffusionAdapter,
    LastLayerError,
    alphas_cumprod,
    resolve_last_layer,
    use_last_layer_weights,
)
from genunc_lightning.models import MLPDenoiser, SmallUNet


def test_unknown_last_layer_suggests_close_names():
    with pytest.raises(LastLayerError, match=r"no submodule named 'out\.3'.*Closest names: out\.2"):
        resolve_last_layer(SmallUNet(), "out.3")


def test_last_layer_without_parameters_or_of_unsupported_type():
    with pytest.raises(LastLayerError, match="no parameters of its own.*nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d"):
        resolve_last_layer(SmallUNet(), "out")
    with pytest.raises(LastLayerError, match="GroupNorm, which is not supported. Supported types: nn.Linear"):
        resolve_last_layer(SmallUNet(), "out.0")


def test_schedules_match_numpy():
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(alphas_cumprod("linear", 1000).numpy(), np.cumprod(1 - betas), rtol=1e-12)
    s, steps = 0.008, np.arange(1001) / 1000
    f = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
    ref = np.cumprod(1 - np.minimum(1 - f[1:] / f[:-1], 0.999))
    np.testing.assert_allclose(alphas_cumprod("cosine", 1000).numpy(), ref, rtol=1e-12)


class FixedOutput(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value
        self.out = nn.Linear(1, 1)

    def forward(self, x, t):
        return self.value


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_denoised_inverts_the_forward_process(prediction):
    x0, eps = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor([5, 400, 990])
    a = alphas_cumprod("linear", 1000)[t].view(-1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    target = {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction]
    adapter = GaussianDiffusionAdapter(FixedOutput(target), "out", (4,), prediction=prediction)
    got_x0, got_eps, _ = adapter.denoised(xt, t, None)
    torch.testing.assert_close(got_x0, x0)
    torch.testing.assert_close(got_eps, eps)


class PointMassOracle(nn.Module):
    """The exact denoiser for data concentrated at ``c``, in any parameterisation."""

    def __init__(self, c, prediction, schedule="linear"):
        super().__init__()
        self.c, self.prediction = c, prediction
        self.a = alphas_cumprod(schedule, 1000)
        self.out = nn.Linear(1, 1)

    def forward(self, x, t):
        if self.prediction == "flow":
            tb = t.view(-1, 1)
            return (self.c - x) / (1 - tb).clamp(min=1e-12)
        a = self.a[t.round().long()].view(-1, 1).to(x.dtype)
        eps = (x - a.sqrt() * self.c) / (1 - a).sqrt()
        return {"eps": eps, "x0": self.c.expand_as(x), "v": a.sqrt() * eps - (1 - a).sqrt() * self.c}[self.prediction]


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_gaussian_samplers_recover_a_point_mass(sampler, prediction):
    c = torch.tensor([[0.5, -1.5]], dtype=torch.float64)
    oracle = PointMassOracle(c, prediction, "cosine").double()
    adapter = GaussianDiffusionAdapter(oracle, "out", (2,), prediction=prediction, schedule="cosine", sampler=sampler)
    out = adapter.sample(torch.arange(4), steps=10)
    torch.testing.assert_close(out, c.expand(4, 2), rtol=1e-6, atol=1e-6)


class GaussianFlowOracle(nn.Module):
    """Exact velocity E[x1 − ε | x_t] for data N(mu, s²I) on the path x_t = (1 − t)ε + t·x1."""

    def __init__(self, mu, s):
        super().__init__()
        self.mu, self.s = mu, s
        self.out = nn.Linear(1, 1)

    def forward(self, x, t):
        tb = t.view(-1, 1)
        var = (1 - tb) ** 2 + tb**2 * self.s**2
        return self.mu + (tb * self.s**2 - (1 - tb)) / var * (x - tb * self.mu)


@pytest.mark.parametrize(("sampler", "steps", "tol"), [("euler", 400, 2e-2), ("heun", 40, 1e-3), ("dopri5", 0, 1e-4)])
def test_flow_samplers_follow_the_exact_flow(sampler, steps, tol):
    from genunc_lightning import seeding

    mu, s = torch.tensor([[2.0, -1.0]], dtype=torch.float64), 0.3
    adapter = FlowMatchingAdapter(GaussianFlowOracle(mu, s).double(), "out", (2,), sampler=sampler, steps=steps or 1)
    seeds = torch.arange(3)
    eps = seeding.randn(seeding.generators(seeds, "cpu"), (2,), "cpu", torch.float64)
    torch.testing.assert_close(adapter.sample(seeds), mu + s * eps, rtol=0, atol=tol)


ADAPTERS = {
    "ddpm": lambda m: GaussianDiffusionAdapter(m, "out", (2,), sampler="ddpm", steps=20),
    "ddim": lambda m: GaussianDiffusionAdapter(m, "out", (2,), sampler="ddim", eta=0.5, steps=20, prediction="v"),
    "dpm_solver_2": lambda m: GaussianDiffusionAdapter(m, "out", (2,), sampler="dpm_solver_2", steps=9),
    "dpm_solver++_2m": lambda m: GaussianDiffusionAdapter(m, "out", (2,), sampler="dpm_solver++_2m", steps=10),
    "euler": lambda m: FlowMatchingAdapter(m, "out", (2,), sampler="euler", steps=10),
    "heun": lambda m: FlowMatchingAdapter(m, "out", (2,), sampler="heun", steps=10),
}


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_a_sample_is_a_function_of_its_seed_alone(name):
    adapter = ADAPTERS[name](MLPDenoiser(hidden=32, depth=2, num_classes=3))
    adapter.num_classes = 3
    seeds = torch.tensor([11, 22, 33, 44, 55, 66, 77, 88])
    classes = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    batch8 = adapter.sample(seeds, classes)
    for i in (0, 5):
        one = adapter.sample(seeds[i : i + 1], classes[i : i + 1])
        torch.testing.assert_close(one[0], batch8[i], rtol=1e-5, atol=1e-6)
    reordered = adapter.sample(seeds.flip(0), classes.flip(0))
    torch.testing.assert_close(reordered.flip(0), batch8, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(batch8[0], batch8[3])  # different seeds differ


def test_conditional_model_needs_classes():
    adapter = GaussianDiffusionAdapter(MLPDenoiser(num_classes=3), "out", (2,), num_classes=3)
    with pytest.raises(ValueError, match="pass classes"):
        adapter.sample(torch.arange(2))


def test_weights_context_swaps_without_touching_the_model():
    model = MLPDenoiser(hidden=16, depth=1)
    adapter = GaussianDiffusionAdapter(model, "out", (2,), steps=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seeds = torch.arange(4)
    base = adapter.sample(seeds)
    same = {n: p.detach().clone() for n, p in model.out.named_parameters()}
    torch.testing.assert_close(adapter.sample(seeds, weights=same), base, rtol=0, atol=0)
    other = {n: p + 0.1 for n, p in same.items()}
    moved = adapter.sample(seeds, weights=other)
    assert not torch.allclose(moved, base)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    torch.testing.assert_close(adapter.sample(seeds), base, rtol=0, atol=0)


def test_stacked_member_weights_apply_per_chunk():
    layer = nn.Linear(3, 2)
    members = {"weight": torch.randn(4, 2, 3), "bias": torch.randn(4, 2)}
    x = torch.randn(4 * 5, 3)
    with use_last_layer_weights(layer, members):
        out = layer(x)
    for m in range(4):
        ref = torch.nn.functional.linear(x[m * 5 : (m + 1) * 5], members["weight"][m], members["bias"][m])
        torch.testing.assert_close(out[m * 5 : (m + 1) * 5], ref)
    with pytest.raises(ValueError, match="shape"):
        with use_last_layer_weights(layer, {"weight": torch.randn(3, 3), "bias": torch.randn(2)}):
            pass


def test_decode_maps_image_range_to_unit_interval():
    adapter = GaussianDiffusionAdapter(SmallUNet(), "out.2", (1, 8, 8), image_range=(-1.0, 1.0))
    x = torch.tensor([-1.0, 0.0, 1.0, 3.0])
    torch.testing.assert_close(adapter.decode(x), torch.tensor([0.0, 0.5, 1.0, 1.0]))
    assert math.isclose(adapter.alphas_cumprod[0].item(), 1 - 1e-4)


def test_dopri5_samples_match_across_batch_sizes_up_to_the_solver_tolerance():
    adapter = FlowMatchingAdapter(MLPDenoiser(hidden=32, depth=2), "out", (2,), sampler="dopri5", rtol=1e-6, atol=1e-6)
    seeds = torch.arange(8)
    eight = adapter.sample(seeds)
    torch.testing.assert_close(adapter.sample(seeds[2:3])[0], eight[2], rtol=1e-3, atol=1e-3)


class TimeOnlyDenoiser(nn.Module):
    """An unconditional denoiser whose forward takes (x, t) and nothing else."""

    def __init__(self):
        super().__init__()
        self.out = nn.Linear(3, 2)

    def forward(self, x, t):
        return self.out(torch.cat([x, t[:, None].float() / 1000], dim=1))


@pytest.mark.parametrize("family", ["gaussian", "flow"])
def test_an_unconditional_model_ignores_the_labels_of_image_label_batches(family):
    denoiser = TimeOnlyDenoiser()
    if family == "gaussian":
        adapter = GaussianDiffusionAdapter(denoiser, "out", (2,))
    else:
        adapter = FlowMatchingAdapter(denoiser, "out", (2,))
    x, y, seeds = torch.randn(6, 2), torch.arange(6), torch.arange(6)
    torch.testing.assert_close(adapter.residual((x, y), seeds), adapter.residual(x, seeds), rtol=0, atol=0)
    torch.testing.assert_close(adapter.residual({"image": x, "label": y}, seeds), adapter.residual(x, seeds))


@pytest.mark.parametrize("how", ["wrapped", "in place"])
def test_compiled_denoisers_are_accepted_under_their_original_names(tmp_path, how):
    from genunc_lightning.laplace import DiagonalLaplacePosterior, fisher_batch
    from genunc_lightning.seeding import example_seeds

    torch.manual_seed(0)
    model = MLPDenoiser(hidden=16, depth=2)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    eager = GaussianDiffusionAdapter(model, "out", (2,), steps=4)
    if how == "wrapped":
        compiled_model = torch.compile(model, backend="eager")  # an OptimizedModule: names gain "_orig_mod."
    else:
        compiled_model = MLPDenoiser(hidden=16, depth=2)
        compiled_model.load_state_dict(model.state_dict())
        compiled_model.compile(backend="eager")
    compiled = GaussianDiffusionAdapter(compiled_model, "out", (2,), steps=4)
    compiled.load_weights(tmp_path / "w.pt")  # the original module's keys
    x, seeds = torch.randn(6, 2), example_seeds(0, range(6))
    fb = fisher_batch(compiled, x, [seeds])
    post = DiagonalLaplacePosterior.fit(compiled.last_layer_module, "out", fb.diag, 6, 1.0, 12)
    assert post.check_compatible(compiled_model) is compiled.last_layer_module
    torch.testing.assert_close(fb.diag["weight"], fisher_batch(eager, x, [seeds]).diag["weight"])
    torch.testing.assert_close(compiled.sample(seeds), eager.sample(seeds))


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_step_matches_ho_et_al_in_float64(variance):
    """x_{t−1} = (x_t − β_t/√(1−ᾱ_t) ε̂)/√α_t + σ_t z, with σ_t² = β_t or β̃_t (Ho et al. 2020, Algorithm 2)."""
    torch.manual_seed(0)
    net = MLPDenoiser(hidden=16, depth=2).double()
    adapter = GaussianDiffusionAdapter(net, "out", (2,), sampler="ddpm", num_train_steps=100, steps=100,
                                       ddpm_variance=variance)  # fmt: skip
    x, z = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    t = 40
    a, a_prev = adapter.alphas_cumprod[t], adapter.alphas_cumprod[t - 1]
    beta = 1 - a / a_prev
    with torch.no_grad():
        eps = net(x, torch.full((5,), float(t), dtype=torch.float64))
        sigma2 = beta if variance == "fixed_large" else (1 - a_prev) / (1 - a) * beta
        expected = (x - beta / (1 - a).sqrt() * eps) / (1 - beta).sqrt() + sigma2.sqrt() * z
        torch.testing.assert_close(adapter.ddim_step(x, t, t - 1, None, z), expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="fixed_large"):
        GaussianDiffusionAdapter(net, "out", (2,), sampler="ddim", ddpm_variance="fixed_large")
