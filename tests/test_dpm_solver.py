"""DPM-Solver and the learned-variance DDPM against float64 references written from the papers' formulas."""

import numpy as np
import pytest
import torch

from genunc_lightning.adapters import GaussianDiffusionAdapter, alphas_cumprod

N = 100


class TanhDenoiser(torch.nn.Module):
    """ε̂(x, t) = tanh(W x + t/N · c), the same function in numpy below; ``learn_sigma`` appends v = tanh(U x)."""

    def __init__(self, dim=3, learn_sigma=False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.out = torch.nn.Linear(dim, 2 * dim if learn_sigma else dim)
        with torch.no_grad():
            self.out.weight.copy_(torch.randn(self.out.weight.shape, generator=g) * 0.5)
            self.out.bias.copy_(torch.randn(self.out.bias.shape, generator=g) * 0.5)

    def forward(self, x, t):
        h = self.out(x)
        return torch.tanh(h + (t / N)[:, None] * torch.ones_like(h))

    def numpy(self, x, t):
        w, b = self.out.weight.detach().double().numpy(), self.out.bias.detach().double().numpy()
        return np.tanh(x @ w.T + b + t / N)


def initial_noise(seeds, dim, steps_of_noise=0):
    """What NoiseSource draws: per sample, its initial noise, then every step's noise at once."""
    x, z = [], []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        x.append(torch.randn((dim,), generator=g, dtype=torch.float64))
        if steps_of_noise:
            z.append(torch.randn((steps_of_noise, dim), generator=g, dtype=torch.float64))
    return torch.stack(x).numpy(), (torch.stack(z).numpy() if steps_of_noise else None)


# --- the reference: U-ViT's discrete NoiseScheduleVP and Lu et al.'s algorithms, in numpy float64 -------------


class Schedule:
    def __init__(self, abar):
        self.t = np.linspace(0.0, 1.0, N + 1)[1:]
        self.log_alpha = 0.5 * np.log(abar)

    def alpha(self, t):
        return np.exp(np.interp(t, self.t, self.log_alpha))

    def sigma(self, t):
        return np.sqrt(1 - self.alpha(t) ** 2)

    def lam(self, t):
        return np.log(self.alpha(t)) - np.log(self.sigma(t))

    def t_of_lambda(self, lam):
        log_alpha = -0.5 * np.logaddexp(0, -2 * lam)
        return np.interp(log_alpha, self.log_alpha[::-1], self.t[::-1])


def reference_dpm_solver(net, abar, x, steps, method, offset):
    """Lu et al. 2022a Alg. 1 (DPM-Solver-2), 2022b Alg. 1 (++(2S)) and Alg. 2 (++(2M)), on a uniform t grid."""
    ns = Schedule(abar)
    grid = np.linspace(1.0, 1.0 / N, steps + 1)

    def eps(z, t):
        return net.numpy(z, (t - 1.0 / N) * N + offset)

    def data(z, t):
        return (z - ns.sigma(t) * eps(z, t)) / ns.alpha(t)

    if method == "dpm_solver++_2m":
        h = [None] + [ns.lam(grid[i]) - ns.lam(grid[i - 1]) for i in range(1, steps + 1)]
        previous = data(x, grid[0])
        x = ns.sigma(grid[1]) / ns.sigma(grid[0]) * x - ns.alpha(grid[1]) * np.expm1(-h[1]) * previous
        for i in range(2, steps + 1):
            current = data(x, grid[i - 1])
            r = h[i - 1] / h[i]
            d = (1 + 1 / (2 * r)) * current - 1 / (2 * r) * previous
            x = ns.sigma(grid[i]) / ns.sigma(grid[i - 1]) * x - ns.alpha(grid[i]) * np.expm1(-h[i]) * d
            previous = current
        return x
    for i in range(0, steps - 1, 2):  # second-order steps over two grid intervals; the middle point sets r
        s, t = grid[i], grid[i + 2]
        h = ns.lam(t) - ns.lam(s)
        r = (ns.lam(grid[i + 1]) - ns.lam(s)) / h
        s1 = ns.t_of_lambda(ns.lam(s) + r * h)
        if method == "dpm_solver_2":
            e = eps(x, s)
            u = ns.alpha(s1) / ns.alpha(s) * x - ns.sigma(s1) * np.expm1(r * h) * e
            x = (ns.alpha(t) / ns.alpha(s) * x - ns.sigma(t) * np.expm1(h) * e
                 - ns.sigma(t) / (2 * r) * np.expm1(h) * (eps(u, s1) - e))  # fmt: skip
        else:
            d0 = data(x, s)
            u = ns.sigma(s1) / ns.sigma(s) * x - ns.alpha(s1) * np.expm1(-r * h) * d0
            d = (1 - 1 / (2 * r)) * d0 + 1 / (2 * r) * data(u, s1)
            x = ns.sigma(t) / ns.sigma(s) * x - ns.alpha(t) * np.expm1(-h) * d
    if steps % 2:  # an odd count ends with one first-order step
        s, t = grid[-2], grid[-1]
        if method == "dpm_solver_2":
            x = ns.alpha(t) / ns.alpha(s) * x - ns.sigma(t) * np.expm1(ns.lam(t) - ns.lam(s)) * eps(x, s)
        else:
            x = ns.sigma(t) / ns.sigma(s) * x - ns.alpha(t) * np.expm1(ns.lam(s) - ns.lam(t)) * data(x, s)
    return x


@pytest.mark.parametrize("method", ["dpm_solver_2", "dpm_solver++_2s", "dpm_solver++_2m"])
@pytest.mark.parametrize("steps", [10, 7])
def test_dpm_solver_equals_a_float64_reference(method, steps):
    net = TanhDenoiser()
    abar = alphas_cumprod("scaled_linear", N, 0.00085, 0.012).numpy()
    adapter = GaussianDiffusionAdapter(net, "out", (3,), schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       num_train_steps=N, sampler=method, steps=steps, timestep_offset=1)  # fmt: skip
    seeds = [4, 5, 6, 7]
    x, _ = initial_noise(seeds, 3)
    expected = reference_dpm_solver(net, abar, x, steps, method, offset=1)
    ours64 = adapter.double().sample(torch.tensor(seeds)).numpy()
    np.testing.assert_allclose(ours64, expected, rtol=1e-9, atol=1e-9)
    ours32 = adapter.float().sample(torch.tensor(seeds)).double().numpy()
    np.testing.assert_allclose(ours32, expected, rtol=1e-4, atol=1e-4)


def test_dpm_solver_pp_2s_converges_as_its_steps_grow():
    """A convergence check the reference cannot share a mistake with: 2nd order at 20 and 200 steps agree closely."""
    adapter = GaussianDiffusionAdapter(TanhDenoiser(), "out", (3,), num_train_steps=N, sampler="dpm_solver++_2s")
    adapter = adapter.double()
    seeds = torch.arange(8)
    fine = adapter.sample(seeds, steps=400)
    errors = [(adapter.sample(seeds, steps=k) - fine).abs().max().item() for k in (10, 20, 40)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-2


# --- improved-diffusion's learned-range DDPM, on its respaced betas -----------------------------------------


def space_timesteps_ddim(stride):
    return list(range(0, N, stride))


def reference_learned_range(net, abar_full, use, x, z):
    """improved-diffusion: SpacedDiffusion's new betas, p_mean_variance(learned_range), p_sample, in float64."""
    betas, last = [], 1.0
    for i, a in enumerate(abar_full):
        if i in use:
            betas.append(1 - a / last)
            last = a
    betas = np.array(betas)
    abar = np.cumprod(1 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    posterior_variance = betas * (1 - abar_prev) / (1 - abar)
    log_var_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
    coef1 = betas * np.sqrt(abar_prev) / (1 - abar)
    coef2 = (1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar)
    for step, i in enumerate(reversed(range(len(use)))):
        out = net.numpy(x, float(use[i]))
        eps, v = out[:, :3], out[:, 3:]
        x0 = np.sqrt(1 / abar[i]) * x - np.sqrt(1 / abar[i] - 1) * eps
        frac = (v + 1) / 2
        log_var = frac * np.log(betas[i]) + (1 - frac) * log_var_clipped[i]
        mean = coef1[i] * x0 + coef2[i] * x
        x = mean + (i > 0) * np.exp(0.5 * log_var) * z[:, step]
    return x


def test_learned_variance_ddpm_equals_improved_diffusions_formula_in_float64():
    net = TanhDenoiser(learn_sigma=True)
    adapter = GaussianDiffusionAdapter(net, "out", (3,), num_train_steps=N, sampler="ddpm", output_channels=3,
                                       ddpm_variance="learned_range", timestep_respacing="ddim10").double()  # fmt: skip
    seeds = [1, 2, 3]
    x, z = initial_noise(seeds, 3, steps_of_noise=10)
    expected = reference_learned_range(net, alphas_cumprod("linear", N).numpy(), space_timesteps_ddim(10), x, z)
    np.testing.assert_allclose(adapter.sample(torch.tensor(seeds)).numpy(), expected, rtol=1e-9, atol=1e-9)
    fixed = GaussianDiffusionAdapter(net, "out", (3,), num_train_steps=N, sampler="ddpm", output_channels=3,
                                     timestep_respacing="ddim10").double()  # fmt: skip
    assert np.abs(fixed.sample(torch.tensor(seeds)).numpy() - expected).max() > 1e-3  # the variance output matters
    with pytest.raises(ValueError, match="set output_channels to the prediction's channels"):
        GaussianDiffusionAdapter(net, "out", (3,), sampler="ddpm", ddpm_variance="learned_range")
