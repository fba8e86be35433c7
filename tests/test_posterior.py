"""The diagonal Laplace posterior: maths, persistence, model checks and laplace-torch export."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from genunc_lightning.adapters import GaussianDiffusionAdapter
from genunc_lightning.laplace import (
    DiagonalLaplacePosterior,
    PosteriorFileError,
    PosteriorMismatchError,
    ZeroFisherError,
    fisher_batch,
    log_marginal_likelihood,
    optimal_prior_precision,
)
from genunc_lightning.models import MLPDenoiser, SmallUNet
from genunc_lightning.seeding import example_seeds


def fitted(model=None, sigma="auto", prior_precision="auto", n=32, x=None, **kwargs):
    model = model or MLPDenoiser(hidden=16, depth=2)
    adapter = GaussianDiffusionAdapter(model, "out", (2,))
    x = torch.randn(n, 2) if x is None else x
    fb = fisher_batch(adapter, x, [example_seeds(0, range(n))])
    post = DiagonalLaplacePosterior.fit(
        model.out, "out", fb.diag, n, float(fb.squared_residual_sum), fb.num_residuals, sigma, prior_precision, **kwargs
    )
    return post, fb, model


@pytest.mark.parametrize(
    ("convention", "factor"),
    [("ef", 1 / 0.5**4), ("laplace_torch", 2 / 0.5**2)],  # the EF of N(f, σ²): H/σ⁴; laplace-torch: 2H/σ²
)
def test_precision_is_scaled_fisher_plus_prior(convention, factor):
    post, fb, _ = fitted(sigma=0.5, prior_precision=3.0, dataset_size=320, convention=convention)
    for name, h in fb.diag.items():
        torch.testing.assert_close(post.precision[name], h * (320 / 32) * factor + 3.0)
        torch.testing.assert_close(post.variance[name], 1.0 / post.precision[name])
    hot = post.with_scale(temperature=10.0)
    torch.testing.assert_close(hot.variance["weight"], 10.0 * post.variance["weight"])
    assert post.num_params == 16 * 2 + 2


def test_auto_ef_precision_matches_the_ggn_on_well_specified_linear_gaussian_data():
    """Data y = Wx + b + N(0, σ²) and the layer at (W, b): the GGN precision is Σx²/σ² (and n/σ² for b).

    The EF Σ(x·r)²/σ⁴ matches it in expectation once σ² is the mean squared residual; laplace-torch's
    factor (Σ(x·r)²/σ²) would be σ² = 0.09 times too small.
    """
    from genunc_lightning.laplace import per_example_gradients

    g = torch.Generator().manual_seed(0)
    n, noise = 20000, 0.3
    layer = torch.nn.Linear(3, 2).double()
    x = torch.randn(n, 3, generator=g, dtype=torch.float64) * torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    with torch.no_grad():
        y = layer(x) + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
        r = layer(x) - y  # the gradient of ½‖f − y‖² with respect to f
    grads = per_example_gradients(layer, x, r)
    fisher = {k: v.pow(2).sum(0) for k, v in grads.items()}
    post = DiagonalLaplacePosterior.fit(layer, "", fisher, n, float(r.pow(2).sum()), r.numel())
    assert post.sigma == pytest.approx(noise, rel=0.02) and post.prior_precision < 1e-2 * n
    ggn_weight = (x.pow(2).sum(0) / noise**2).expand(2, 3)
    ggn_bias = torch.full((2,), n / noise**2, dtype=torch.float64)
    for name, ggn in (("weight", ggn_weight), ("bias", ggn_bias)):
        ratio = post.precision[name] / ggn
        assert (ratio - 1).abs().max() < 0.1, (name, ratio)
    old = post.with_scale(convention="laplace_torch").precision["weight"] / 2  # the 0.1 code's H/σ²
    assert (old / ggn_weight).max() < 0.2


def test_paper_preset_is_laplace_torch_with_sigma_and_lambda_one_and_n_equal_N():
    post, fb, _ = fitted(temperature=2.0, dataset_size=320)
    paper = post.paper()
    assert (paper.sigma, paper.prior_precision, paper.temperature) == (1.0, 1.0, 1.0)
    assert paper.dataset_size == paper.num_examples == 32 and paper.convention.value == "laplace_torch"
    for name, h in fb.diag.items():
        torch.testing.assert_close(paper.precision[name], 2 * h + 1)  # the documented formula, 2H + 1


def test_paper_preset_on_a_conv_last_layer_is_the_documented_formula():
    model = SmallUNet(base_channels=8, channel_mults=(1,))
    adapter = GaussianDiffusionAdapter(model, "out.2", (1, 4, 4))
    fb = fisher_batch(adapter, torch.randn(5, 1, 4, 4), [example_seeds(0, range(5))])
    post = DiagonalLaplacePosterior.fit(model.out[2], "out.2", fb.diag, 5, 2.0, 80, dataset_size=50).paper()
    for name, h in fb.diag.items():
        assert h.abs().sum() > 0
        torch.testing.assert_close(post.variance[name], 1 / (2 * h.double() + 1), rtol=1e-12, atol=0)


def test_unknown_convention_is_refused():
    with pytest.raises(ValueError, match="ef, laplace_torch"):
        fitted(convention="ggn")


def test_dataset_size_defaults_to_examples_seen():
    post, _, _ = fitted(n=20)
    assert post.dataset_size == post.num_examples == 20


def test_auto_sigma_is_the_mean_squared_residual():
    model = MLPDenoiser(hidden=16, depth=2)
    adapter = GaussianDiffusionAdapter(model, "out", (2,))
    x = torch.randn(32, 2)
    seeds = example_seeds(0, range(32))
    post, _, _ = fitted(model=model, x=x)
    with torch.no_grad():
        direct = adapter.residual(x, seeds).double().pow(2).mean().item()
    assert post.sigma**2 == pytest.approx(direct, rel=1e-6)
    assert post.info["sigma_mode"] == "auto"


@pytest.mark.parametrize(("convention", "factor"), [("ef", lambda s: s**-4), ("laplace_torch", lambda s: 2 * s**-2)])
def test_auto_prior_precision_maximises_the_log_marginal_likelihood(convention, factor):
    post, _, _ = fitted(convention=convention)
    h = torch.cat([f.flatten() for f in post.fisher.values()]) * factor(post.sigma)
    theta_sq = sum(float(m.double().pow(2).sum()) for m in post.mean.values())
    best = log_marginal_likelihood(post.prior_precision, theta_sq, h)
    grid = np.logspace(-6, 8, 4001)
    # Brute force in numpy, independent of our helper.
    hn = h.numpy()
    values = -0.5 * grid * theta_sq + 0.5 * hn.size * np.log(grid) - 0.5 * np.log(hn[None] + grid[:, None]).sum(1)
    assert best >= values.max() - 1e-9 * abs(values.max())
    assert abs(math.log(post.prior_precision) - math.log(grid[values.argmax()])) < 2 * math.log(grid[1] / grid[0])
    for factor in (0.999, 1.001):  # and it is a local maximum at a finer scale than the grid
        assert log_marginal_likelihood(post.prior_precision * factor, theta_sq, h) < best


def test_optimal_prior_precision_closed_form_case():
    # With every h_i = h the root of Σ h/(λ(h+λ)) = ‖θ‖² is known: P h / (λ(h+λ)) = s.
    h, p, s = 4.0, 10, 2.5
    lam = optimal_prior_precision(s, torch.full((p,), h))
    assert p * h / (lam * (h + lam)) == pytest.approx(s, rel=1e-9)


def test_save_load_gives_bit_identical_samples(tmp_path):
    post, _, _ = fitted(temperature=2.0)
    path = post.save(tmp_path / "p.safetensors")
    loaded = DiagonalLaplacePosterior.load(path)
    a = post.sample(5, torch.Generator().manual_seed(7))
    b = loaded.sample(5, torch.Generator().manual_seed(7))
    for name in a:
        assert a[name].shape == (5, *post.mean[name].shape)
        assert torch.equal(a[name], b[name])
    assert loaded.metadata() == post.metadata()


def test_samples_have_the_posterior_moments():
    post, _, _ = fitted(sigma=1.0, prior_precision=1.0)
    draws = post.sample(20000, torch.Generator().manual_seed(0))
    z = (draws["weight"].double() - post.mean["weight"].double()) / post.std["weight"]
    assert z.mean().abs() < 0.05 and (z.std() - 1).abs() < 0.02
    assert torch.equal(post.zero_variance().sample(2)["weight"][1], post.mean["weight"])


def test_check_compatible_names_both_layers():
    post, _, model = fitted()
    assert post.check_compatible(model) is model.out
    other = MLPDenoiser(hidden=8, depth=2)
    with pytest.raises(PosteriorMismatchError, match=r"weight \(2, 16\).*weight \(2, 8\)"):
        post.check_compatible(other)
    same_shape = MLPDenoiser(hidden=16, depth=2)
    with pytest.raises(PosteriorMismatchError, match="other weights"):
        post.check_compatible(same_shape)
    with pytest.raises(PosteriorMismatchError, match="does not have"):
        post.check_compatible(SmallUNet())


def test_truncated_and_foreign_files(tmp_path):
    post, _, _ = fitted()
    path = post.save(tmp_path / "p.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PosteriorFileError, match="truncated"):
        DiagonalLaplacePosterior.load(tmp_path / "cut.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"), metadata={"format": "pt"})
    with pytest.raises(PosteriorFileError, match="not a genunc-lightning posterior"):
        DiagonalLaplacePosterior.load(tmp_path / "foreign.safetensors")
    (tmp_path / "text.safetensors").write_text("hello")
    with pytest.raises(PosteriorFileError):
        DiagonalLaplacePosterior.load(tmp_path / "text.safetensors")
    with pytest.raises(PosteriorFileError, match="fit_laplace"):
        DiagonalLaplacePosterior.load(tmp_path / "missing.safetensors")


def _as_version_1(path, out):
    """Rewrites a posterior file as genunc-lightning 0.1 wrote it: format version 1, no convention."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["format_version"] = "1"
    del meta["convention"]
    save_file(tensors, str(out), metadata=meta)
    return out


def test_version_1_files_are_refused_with_the_fix_or_upgraded(tmp_path):
    post, fb, _ = fitted(sigma="auto", prior_precision="auto")
    old = _as_version_1(post.save(tmp_path / "p.safetensors"), tmp_path / "old.safetensors")
    with pytest.raises(PosteriorFileError, match=r"σ².*genunc fit_laplace.*upgrade=True"):
        DiagonalLaplacePosterior.load(old)
    upgraded = DiagonalLaplacePosterior.load(old, upgrade=True)
    # The Fisher and the auto σ are convention-free; the auto λ is maximised again on the EF's h.
    assert upgraded.convention.value == "ef" and upgraded.sigma == post.sigma
    assert upgraded.prior_precision == pytest.approx(post.prior_precision, rel=1e-9)
    for name, h in fb.diag.items():
        torch.testing.assert_close(upgraded.precision[name], h / post.sigma**4 + post.prior_precision)
    fixed, _, _ = fitted(sigma=0.5, prior_precision=3.0)
    old_fixed = _as_version_1(fixed.save(tmp_path / "f.safetensors"), tmp_path / "old_f.safetensors")
    assert DiagonalLaplacePosterior.load(old_fixed, upgrade=True).prior_precision == 3.0


def test_zero_fisher_is_an_error():
    model = MLPDenoiser(hidden=8, depth=1)
    with pytest.raises(ZeroFisherError, match="zero everywhere"):
        DiagonalLaplacePosterior.fit(
            model.out, "out", {"weight": torch.zeros(2, 8), "bias": torch.zeros(2)}, 10, 1.0, 20
        )


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    post, _, _ = fitted()
    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError):
        post.save(tmp_path / "p.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("convention", ["ef", "laplace_torch"])
def test_export_to_laplace_torch_has_our_posterior(convention):
    post, _, model = fitted(temperature=3.0, dataset_size=100, convention=convention)
    la = post.to_laplace_torch(model)
    ours = torch.cat([post.variance[n].flatten() for n in ("weight", "bias")])
    torch.testing.assert_close(la.posterior_variance.double(), ours, rtol=1e-5, atol=0)
    torch.testing.assert_close(la.mean, torch.cat([post.mean["weight"].flatten(), post.mean["bias"]]))


def test_export_refuses_conv_last_layers():
    model = SmallUNet(base_channels=8, channel_mults=(1,))
    adapter = GaussianDiffusionAdapter(model, "out.2", (1, 4, 4))
    fb = fisher_batch(adapter, torch.randn(3, 1, 4, 4), [example_seeds(0, range(3))])
    post = DiagonalLaplacePosterior.fit(model.out[2], "out.2", fb.diag, 3, 1.0, 48)
    with pytest.raises(ValueError, match="only nn.Linear"):
        post.to_laplace_torch(model)


def test_parameters_the_loss_never_reads_stay_out_of_lambda_variance_and_summary():
    """ADM's layout: the last conv gives 2C channels, the loss reads the first C (output_channels=C)."""
    from tests.denoisers import ConvDenoiser

    torch.manual_seed(0)
    net = ConvDenoiser(2, 3, torch.nn.Conv2d(4, 6, 3, padding=1)).double()
    adapter = GaussianDiffusionAdapter(net, "out", (3, 5, 5), output_channels=3)
    n = 16
    fb = fisher_batch(adapter, torch.randn(n, 3, 5, 5, dtype=torch.float64), [example_seeds(0, range(n))])
    assert (fb.diag["weight"][3:] == 0).all() and (fb.diag["bias"][3:] == 0).all()
    post = DiagonalLaplacePosterior.fit(net.out, "out", fb.diag, n, float(fb.squared_residual_sum), fb.num_residuals)
    assert post.unread["weight"][3:].all() and not post.unread["weight"][:3].any() and post.unread["bias"][3:].all()
    # λ: the numpy maximiser of the marginal likelihood over the read half only
    h = np.concatenate([fb.diag["weight"][:3].numpy().ravel(), fb.diag["bias"][:3].numpy()]) * post.likelihood_scale
    weight, bias = net.out.weight.detach(), net.out.bias.detach()
    theta_sq = float(weight[:3].pow(2).sum() + bias[:3].pow(2).sum())
    grid = np.logspace(-6, 8, 40001)
    values = -0.5 * grid * theta_sq + 0.5 * h.size * np.log(grid) - 0.5 * np.log(h[None] + grid[:, None]).sum(1)
    assert abs(math.log(post.prior_precision) - math.log(grid[values.argmax()])) < 2 * math.log(grid[1] / grid[0])
    all_h = torch.cat([f.flatten() for f in fb.diag.values()]) * post.likelihood_scale
    all_theta = float(weight.pow(2).sum() + bias.pow(2).sum())
    assert optimal_prior_precision(all_theta, all_h) != pytest.approx(post.prior_precision, rel=1e-3)
    # unread parameters keep their trained values in every draw; read ones vary
    draws = post.sample(4, torch.Generator().manual_seed(0))
    assert torch.equal(draws["weight"][:, 3:], weight[3:].expand(4, -1, -1, -1, -1))
    assert torch.equal(draws["bias"][:, 3:], bias[3:].expand(4, -1))
    assert (draws["weight"][:, :3] != weight[:3]).all()
    summary = post.summary()
    assert summary["unread_parameters"] == 3 * 4 * 9 + 3 and summary["unread_units"] == 3
    assert summary["fisher_min"] > 0 and summary["std_min"] > 0
    assert "left out         111 parameters of 3 output units the loss never reads" in post.format_summary()
    fully_read, _, _ = fitted()
    assert fully_read.summary()["unread_parameters"] == 0 and "left out" not in fully_read.format_summary()
