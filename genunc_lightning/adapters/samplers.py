"""Samplers as free functions over a denoiser callable and a per-sample noise source (after k-diffusion).

Every sampler here takes the network as a callable (``denoised(x, t) -> (x̂0, ε̂)`` for Gaussian
diffusion, ``velocity(t, x)`` for flows, ``denoise(x, σ)`` for σ-parameterised models, ``output(x, t)``
for a diffusers scheduler) and draws its randomness from a ``NoiseSource``, whose draws for sample b
come from a generator seeded with that sample's seed alone. A sample is then a function of its seed,
whatever the batch. The adapters wrap these functions around their networks; the baselines (BayesDiff,
AU) walk the same DDIM steps.

The built-in samplers: DDIM (any η), ancestral DDPM (β̃, β or a learned variance), DPM-Solver-2 and
DPM-Solver++ (2S, 2M) on a discrete schedule, Euler and Heun for flows and σ-models; and
``sample_with_scheduler``, which runs any diffusers scheduler (``set_timesteps`` / ``scale_model_input``
/ ``step``) for any network.
"""

from __future__ import annotations

import bisect
import copy
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from genunc_lightning import seeding


class NoiseSource:
    """Standard-normal draws per sample: each call draws, for every sample, from that sample's own generator.

    Args:
        seeds: one seed per sample.
        device: where the draws live.
        dtype: their dtype.
    """

    def __init__(self, seeds: torch.Tensor | Sequence[int], device: torch.device | str, dtype: torch.dtype) -> None:
        self.device, self.dtype = torch.device(device), dtype
        self.generators = seeding.generators(seeds, self.device)

    @classmethod
    def like(cls, seeds: torch.Tensor | Sequence[int], module: torch.nn.Module) -> NoiseSource:
        """Draws on the device and in the dtype of ``module``'s first parameter."""
        param = next(module.parameters())
        return cls(seeds, param.device, param.dtype)

    def __call__(self, *shape: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Draws [B, *shape], sample b's from its own generator (after everything drawn for it before)."""
        return seeding.randn(self.generators, shape, self.device, dtype or self.dtype)


def append_dims(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Per-sample values [B] shaped to broadcast against a batch of ``ndim`` dimensions."""
    return values.view(-1, *([1] * (ndim - 1)))


# --- Gaussian diffusion: DDIM and DDPM steps on ᾱ -------------------------------------------------

DenoisedFn = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


def ddim_sigma(a: float, a_prev: float, eta: float) -> float:
    """The noise scale of a DDIM step from ᾱ = ``a`` to ᾱ' = ``a_prev`` (η = 1: DDPM's β̃)."""
    return eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))


def ddim_step(
    x0: torch.Tensor, eps: torch.Tensor, a_prev: float, sigma: float, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """X' = √ᾱ' x̂0 + √(1 − ᾱ' − σ²) ε̂ + σ z (Song et al. 2021, eq. 12)."""
    x_prev = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("A stochastic DDIM step (eta > 0) needs noise.")
        x_prev = x_prev + sigma * noise
    return x_prev


def ddpm_posterior_mean(x: torch.Tensor, x0: torch.Tensor, a: float, a_prev: float) -> torch.Tensor:
    """μ̃(x_t, x̂0) of the forward process between ᾱ = ``a`` and ᾱ' = ``a_prev``, with β = 1 − ᾱ/ᾱ' (Ho et al., eq. 7)."""
    beta = 1 - a / a_prev
    return (math.sqrt(a_prev) * beta / (1 - a)) * x0 + (math.sqrt(a / a_prev) * (1 - a_prev) / (1 - a)) * x


def ddpm_fixed_large_step(
    x: torch.Tensor, x0: torch.Tensor, a: float, a_prev: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """Ho et al.: x' = μ̃(x_t, x̂0) + √β z, with β = 1 − ᾱ/ᾱ' between the (strided) steps."""
    if noise is None:
        raise ValueError("An ancestral DDPM step needs noise.")
    return ddpm_posterior_mean(x, x0, a, a_prev) + math.sqrt(1 - a / a_prev) * noise


def ddpm_learned_range_step(
    x: torch.Tensor, x0: torch.Tensor, v: torch.Tensor, a: float, a_prev: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """Nichol and Dhariwal (2021): x' = μ̃(x_t, x̂0) + exp(½ log σ²) z, log σ² = f·log β + (1 − f)·log β̃.

    ``v`` is the network's variance output in [−1, 1] and f = (v + 1)/2; β = 1 − ᾱ/ᾱ' and β̃ = β(1 − ᾱ')/(1 − ᾱ)
    between the (respaced) steps, as improved-diffusion's ``learned_range`` with its respaced betas.
    """
    if noise is None:
        raise ValueError("An ancestral DDPM step needs noise.")
    beta = 1 - a / a_prev
    frac = (v + 1) / 2
    log_variance = frac * math.log(beta) + (1 - frac) * math.log(beta * (1 - a_prev) / (1 - a))
    return ddpm_posterior_mean(x, x0, a, a_prev) + torch.exp(0.5 * log_variance) * noise


def ddim_update(
    x: torch.Tensor,
    x0: torch.Tensor,
    eps: torch.Tensor,
    a: float,
    a_prev: float,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    fixed_large: bool = False,
    variance: torch.Tensor | None = None,
) -> torch.Tensor:
    """One step from ᾱ = ``a`` to ᾱ' = ``a_prev`` given the predictions: DDIM, DDPM with σ² = β, or a learned σ².

    ``variance``: the network's variance output (``ddpm_learned_range_step``), for a learned-variance DDPM.
    """
    if variance is not None:
        return ddpm_learned_range_step(x, x0, variance, a, a_prev, noise)
    if fixed_large:
        return ddpm_fixed_large_step(x, x0, a, a_prev, noise)
    return ddim_step(x0, eps, a_prev, ddim_sigma(a, a_prev, eta), noise)


def ddim_transfer(a: float, a_prev: float) -> tuple[float, float]:
    """(r, c) with x' = r·x + c·ε̂ for a deterministic DDIM step: r = √(ᾱ'/ᾱ), c = √(1 − ᾱ') − r·√(1 − ᾱ)."""
    r = math.sqrt(a_prev / a)
    return r, math.sqrt(1 - a_prev) - r * math.sqrt(1 - a)


def sample_ddim(
    denoised: DenoisedFn,
    x: torch.Tensor,
    timesteps: Sequence[int],
    alpha_bars: Sequence[float],
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    fixed_large: bool = False,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Walks ``timesteps`` (noisiest first) with DDIM steps; the last step returns x̂0.

    Args:
        denoised: ``(x, t) -> (x̂0, ε̂, v)`` at integer timestep ``t``, v the network's variance output for a
            learned-variance DDPM (``ddpm_learned_range_step``), else ``None``.
        x: the initial noise.
        timesteps: training timesteps, descending.
        alpha_bars: ᾱ by training timestep.
        eta: DDIM noise scale.
        noise: [B, len(timesteps), ...] standard-normal draws for the stochastic steps.
        fixed_large: ancestral DDPM steps with σ² = β instead of DDIM's.
        callback: called as ``callback(i, t, x)`` before step i (k-diffusion's way of exposing the walk).
    """
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        if callback is not None:
            callback(i, t, x)
        x0, eps, v = denoised(x, t)
        if t_prev < 0:
            return x0
        step_noise = noise[:, i] if noise is not None else None
        x = ddim_update(x, x0, eps, alpha_bars[t], alpha_bars[t_prev], eta, step_noise, fixed_large, v)
    return x


# --- flows and σ-parameterised models: Euler and Heun ---------------------------------------------


def sample_flow(
    velocity: Callable[[float, torch.Tensor], torch.Tensor], x: torch.Tensor, grid: Sequence[float], heun: bool
) -> torch.Tensor:
    """Integrates dx/dt = v(t, x) over ``grid`` with Euler steps, or Heun's (second order) with ``heun``."""
    for t0, t1 in zip(grid[:-1], grid[1:], strict=True):
        d0 = velocity(t0, x)
        if not heun:
            x = x + (t1 - t0) * d0
        else:
            x_euler = x + (t1 - t0) * d0
            x = x + (t1 - t0) * 0.5 * (d0 + velocity(t1, x_euler))
    return x


def sample_euler_sigmas(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, sigmas: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Karras et al.'s deterministic Euler over a descending σ schedule ending at 0: d = (x − D(x, σ)) / σ."""
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        d = (x - denoise(x, sigma.expand(x.shape[0]))) / sigma
        x = x + d * (sigma_next - sigma)
    return x


# --- diffusers schedulers, for any network ---------------------------------------------------------

SCHEDULER_API = ("set_timesteps", "step", "timesteps")


def check_scheduler(scheduler: Any) -> None:
    """Raises a TypeError unless ``scheduler`` has diffusers' sampling API (``set_timesteps``, ``step``, …).

    A scheduler that reads a learned variance from the network's output is refused too: the adapters give
    the scheduler the prediction half only, as the pipelines do.
    """
    missing = [name for name in SCHEDULER_API if not hasattr(scheduler, name)]
    if missing:
        raise TypeError(
            f"{type(scheduler).__name__} has no {', '.join(missing)}: a scheduler needs diffusers' sampling API "
            "(set_timesteps(steps), scale_model_input(x, t), step(output, t, x).prev_sample), e.g. "
            "diffusers.UniPCMultistepScheduler.from_config(your_scheduler.config)."
        )
    variance = getattr(getattr(scheduler, "config", None), "variance_type", None)
    if variance in ("learned", "learned_range"):
        raise ValueError(
            f"{type(scheduler).__name__} has variance_type={variance!r}, which reads a variance the adapters do not "
            "give it: use variance_type='fixed_small' (or GaussianDiffusionAdapter(sampler='ddpm', "
            "ddpm_variance='learned_range'), which samples with the network's learned variance)."
        )


def sample_with_scheduler(
    output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler: Any,
    steps: int,
    source: NoiseSource,
    shape: Sequence[int],
) -> torch.Tensor:
    """The scheduler's own sampling loop, with every sample's randomness from its own generator.

    What a diffusers pipeline runs: ``set_timesteps``, initial noise × ``init_noise_sigma``, then per
    timestep ``scale_model_input`` and ``step``. A stochastic scheduler's ``step`` is given the list of
    per-sample generators (``randn_tensor`` then draws row b from generator b), so a sample is a function
    of its seed, and equals the pipeline's for ``generator=[torch.Generator().manual_seed(seed), …]``.
    The scheduler is copied first: multistep schedulers keep state between steps.

    Args:
        output: ``(x, t) -> network output`` in the scheduler's ``prediction_type``, ``t`` the scheduler's
            timestep expanded to [B].
        scheduler: a diffusers scheduler (any with ``set_timesteps`` / ``scale_model_input`` / ``step``).
        steps: ``num_inference_steps``.
        source: the per-sample noise.
        shape: the shape of one sample.
    """
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(steps, device=source.device)
    x = source(*shape) * getattr(scheduler, "init_noise_sigma", 1.0)
    takes = inspect.signature(scheduler.step).parameters
    randomness = {"generator": source.generators} if "generator" in takes else {}
    scale = getattr(scheduler, "scale_model_input", None)
    for t in scheduler.timesteps:
        model_input = scale(x, t) if scale is not None else x
        out = output(model_input, t.to(x.device).expand(x.shape[0]))
        x = scheduler.step(out, t, x, **randomness).prev_sample
    return x


# --- DPM-Solver on a discrete schedule (Lu et al. 2022a, 2022b) --------------------------------------


class DiscreteVPSchedule:
    """A discrete schedule ᾱ_n (n = 0 … N − 1) in continuous time t ∈ [1/N, 1], as DPM-Solver reads it.

    log α_t is piecewise linear between the points t_n = (n + 1)/N, where α_{t_n}² = ᾱ_n (the
    ``discrete`` NoiseScheduleVP of DPM-Solver and U-ViT); σ_t² = 1 − α_t² and λ_t = log(α_t/σ_t).
    The network at time t is called at training timestep (t − 1/N)·N, fractional between the points.

    Args:
        alphas_cumprod: ᾱ by training timestep.
    """

    def __init__(self, alphas_cumprod: Sequence[float]) -> None:
        self.num_train_steps = len(alphas_cumprod)
        self.times = [(n + 1) / self.num_train_steps for n in range(self.num_train_steps)]
        self.log_alphas = [0.5 * math.log(a) for a in alphas_cumprod]

    def log_alpha(self, t: float) -> float:
        """The log of α_t, interpolated linearly in t (extrapolated beyond the end points)."""
        return _interpolate(t, self.times, self.log_alphas)

    def sigma(self, t: float) -> float:
        """σ_t = √(1 − α_t²)."""
        return math.sqrt(-math.expm1(2 * self.log_alpha(t)))

    def lambda_(self, t: float) -> float:
        """λ_t = log α_t − log σ_t, the half log-SNR."""
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * math.log(-math.expm1(2 * log_alpha))

    def timestep(self, t: float) -> float:
        """The (fractional) training timestep of continuous time t."""
        return (t - 1 / self.num_train_steps) * self.num_train_steps

    def time_grid(self, steps: int) -> list[float]:
        """``steps`` + 1 times, uniform from t = 1 to t = 1/N (DPM-Solver's ``time_uniform``, U-ViT's)."""
        start, end = 1.0, 1 / self.num_train_steps
        return [start + (end - start) * i / steps for i in range(steps + 1)]


def _interpolate(x: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    """Piecewise-linear y(x) through ascending ``xs``, extended linearly beyond either end."""
    i = min(max(bisect.bisect_right(xs, x), 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


ModelFn = Callable[[torch.Tensor, float], torch.Tensor]


def dpm_solver_step(
    x: torch.Tensor,
    model_s: torch.Tensor,
    s: float,
    t: float,
    schedule: DiscreteVPSchedule,
    data_prediction: bool,
    model_s1: torch.Tensor | None = None,
    r1: float = 1.0,
) -> torch.Tensor:
    """One DPM-Solver step from s to t given the model's ε̂ (or x̂0, for ++) at s (and at s1 for second order).

    First order is DDIM; second order the ``dpm_solver`` form with the model also at s1, λ_s1 = λ_s + r1·h:
    x_t = r·x − φ·D with, for data prediction, r = σ_t/σ_s and φ = α_t(e^{−h} − 1), else r = α_t/α_s and
    φ = σ_t(e^{h} − 1); D = m_s + (m_s1 − m_s)/(2 r1), or m_s at first order.
    """
    h = schedule.lambda_(t) - schedule.lambda_(s)
    if data_prediction:
        ratio, phi = schedule.sigma(t) / schedule.sigma(s), math.exp(schedule.log_alpha(t)) * math.expm1(-h)
    else:
        ratio, phi = math.exp(schedule.log_alpha(t) - schedule.log_alpha(s)), schedule.sigma(t) * math.expm1(h)
    d = model_s if model_s1 is None else model_s + (0.5 / r1) * (model_s1 - model_s)
    return ratio * x - phi * d


def sample_dpm_solver(
    model: ModelFn,
    x: torch.Tensor,
    schedule: DiscreteVPSchedule,
    steps: int,
    multistep: bool = False,
    data_prediction: bool = False,
) -> torch.Tensor:
    """Second-order DPM-Solver with ``steps`` network evaluations, from t = 1 to t = 1/N on a uniform time grid.

    Singlestep (``multistep=False``): the grid's ``steps`` + 1 times taken two intervals at a time, each
    a DPM-Solver-2 step whose intermediate evaluation is the middle grid time (r1 from λ), and one
    first-order step for an odd count: U-ViT's ``DPM_Solver.sample(method="fast", order=2)``, so 50
    steps are 25 second-order steps × 2 evaluations. Multistep (2M): the first step first order, then
    each step reuses the previous evaluation (Lu et al. 2022b, Algorithm 2). The result is x at t = 1/N
    (training timestep 0), as DPM-Solver returns it.

    Args:
        model: ``(x, t) -> ε̂`` (or x̂0 with ``data_prediction``) at continuous time t.
        x: the initial noise.
        schedule: the discrete schedule in continuous time.
        steps: network evaluations.
        multistep: 2M instead of 2S.
        data_prediction: DPM-Solver++ (the model gives x̂0) instead of DPM-Solver (ε̂).
    """
    grid = schedule.time_grid(steps)
    lam = [schedule.lambda_(t) for t in grid]
    if multistep:
        previous = model(x, grid[0])
        x = dpm_solver_step(x, previous, grid[0], grid[1], schedule, data_prediction)
        for i in range(1, steps):
            current = model(x, grid[i])
            # the previous evaluation lies behind s, at r1 = −(λ_s − λ_prev)/h
            r1 = -(lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i])
            x = dpm_solver_step(x, current, grid[i], grid[i + 1], schedule, data_prediction, previous, r1)
            previous = current
        return x
    for i in range(0, steps - 1, 2):
        s, s1, t = grid[i], grid[i + 1], grid[i + 2]
        model_s = model(x, s)
        u = dpm_solver_step(x, model_s, s, s1, schedule, data_prediction)
        r1 = (lam[i + 1] - lam[i]) / (lam[i + 2] - lam[i])
        x = dpm_solver_step(x, model_s, s, t, schedule, data_prediction, model(u, s1), r1)
    if steps % 2:
        x = dpm_solver_step(x, model(x, grid[-2]), grid[-2], grid[-1], schedule, data_prediction)
    return x
