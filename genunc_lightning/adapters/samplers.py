"""Samplers as free functions over a denoiser callable and a per-sample noise source (after k-diffusion).

Every sampler here takes the network as a callable (``denoised(x, t) -> (x̂0, ε̂)`` for Gaussian
diffusion, ``velocity(t, x)`` for flows, ``denoise(x, σ)`` for σ-parameterised models) and draws
its randomness from a ``NoiseSource``, whose draws for sample b come from a generator seeded with
that sample's seed alone. A sample is then a function of its seed, whatever the batch. The adapters
wrap these functions around their networks; the baselines (BayesDiff, AU) walk the same DDIM steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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

DenoisedFn = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


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


def ddpm_fixed_large_step(
    x: torch.Tensor, x0: torch.Tensor, a: float, a_prev: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """Ho et al.: x' = μ̃(x_t, x̂0) + √β z, with β = 1 − ᾱ/ᾱ' between the (strided) steps."""
    if noise is None:
        raise ValueError("An ancestral DDPM step needs noise.")
    beta = 1 - a / a_prev
    mean = (math.sqrt(a_prev) * beta / (1 - a)) * x0 + (math.sqrt(a / a_prev) * (1 - a_prev) / (1 - a)) * x
    return mean + math.sqrt(beta) * noise


def ddim_update(
    x: torch.Tensor,
    x0: torch.Tensor,
    eps: torch.Tensor,
    a: float,
    a_prev: float,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    fixed_large: bool = False,
) -> torch.Tensor:
    """One step from ᾱ = ``a`` to ᾱ' = ``a_prev`` given the predictions: DDIM, or DDPM with σ² = β."""
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
        denoised: ``(x, t) -> (x̂0, ε̂)`` at integer timestep ``t``.
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
        x0, eps = denoised(x, t)
        if t_prev < 0:
            return x0
        step_noise = noise[:, i] if noise is not None else None
        x = ddim_update(x, x0, eps, alpha_bars[t], alpha_bars[t_prev], eta, step_noise, fixed_large)
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
