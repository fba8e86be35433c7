"""Flow matching (velocity prediction) with Euler, Heun and dopri5 samplers."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

import torch
from torch import nn

from genunc_lightning import seeding
from genunc_lightning.adapters.base import DiffusionAdapter
from genunc_lightning.adapters.samplers import NoiseSource, append_dims, sample_flow


class FlowSampler(str, Enum):
    """ODE solver for the probability-flow trajectory."""

    EULER = "euler"
    HEUN = "heun"
    DOPRI5 = "dopri5"


class FlowMatchingAdapter(DiffusionAdapter):
    """Adapter for a velocity field trained on the linear path x_t = (1 − t)·ε + t·x, t ∈ [0, 1].

    The target is v = x − ε; sampling integrates dx/dt = v(x, t) from noise at t = 0 to data at
    t = 1. The denoiser is called as ``denoiser(x_t, time_scale·t)`` (plus ``y`` when conditional).

    ``dopri5`` needs torchdiffeq (``pip install genunc-lightning[ode]``). Its adaptive step sizes
    depend on the whole batch's error estimate, so a dopri5 sample matches across batch sizes only
    up to the solver tolerance; Euler and Heun samples are exact functions of their seeds.

    Args:
        denoiser: the velocity network.
        last_layer: dotted name of its last layer.
        sample_shape: shape of one sample.
        num_classes: classes of a class-conditional model, or ``None``.
        sampler: ``euler``, ``heun`` or ``dopri5``.
        steps: default number of steps (Euler, Heun; Heun costs two evaluations a step).
        time_scale: factor applied to t before it reaches the denoiser.
        rtol: dopri5 relative tolerance.
        atol: dopri5 absolute tolerance.
        image_range: data range of pixel images, mapped to [0, 1] by ``decode``.
        vae: an autoencoder for latent flow matching (see ``DiffusionAdapter``).
        guidance_scale: classifier-free guidance w on the velocity (1: off); see ``DiffusionAdapter``.
        null_class: the unconditional label of a guided class-conditional model.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        last_layer: str,
        sample_shape: Sequence[int],
        num_classes: int | None = None,
        sampler: str = "euler",
        steps: int = 50,
        time_scale: float = 1.0,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        image_range: tuple[float, float] | None = None,
        vae: nn.Module | None = None,
        guidance_scale: float = 1.0,
        null_class: int | None = None,
    ) -> None:
        super().__init__(denoiser, last_layer, sample_shape, num_classes, image_range, vae, guidance_scale, null_class)
        self.sampler = FlowSampler(sampler)
        if self.sampler is FlowSampler.DOPRI5:
            _require_torchdiffeq()
        self.steps = int(steps)
        self.time_scale = float(time_scale)
        self.rtol, self.atol = rtol, atol

    def velocity(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The network's velocity at time ``t`` (a tensor [B] in [0, 1])."""
        return self.call_denoiser_checked(x, (t * self.time_scale).to(x.dtype), y)

    def residual(self, batch: Any, seeds: torch.Tensor) -> torch.Tensor:
        """Velocity prediction − (x − ε) at a per-example uniform t and Gaussian ε."""
        x1, y = self.training_data(batch)
        gens = seeding.generators(seeds, x1.device)
        t = seeding.rand(gens, x1.device, x1.dtype)
        eps = seeding.randn(gens, x1.shape[1:], x1.device, x1.dtype)
        tb = append_dims(t, x1.dim())
        xt = (1 - tb) * eps + tb * x1
        return self.velocity(xt, t, y) - (x1 - eps)

    def _sample(self, seeds: torch.Tensor, classes: torch.Tensor | None, steps: int | None) -> torch.Tensor:
        noise = NoiseSource.like(seeds, self.denoiser)
        x = noise(*self.sample_shape)
        y = classes.to(noise.device) if classes is not None else None
        n = x.shape[0]

        def v(t: float | torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return self.velocity(z, torch.full((n,), float(t), device=z.device, dtype=z.dtype), y)

        if self.sampler is FlowSampler.DOPRI5:
            torchdiffeq = _require_torchdiffeq()
            ts = torch.tensor([0.0, 1.0], device=x.device, dtype=x.dtype)
            return torchdiffeq.odeint(v, x, ts, method="dopri5", rtol=self.rtol, atol=self.atol)[-1]
        grid = torch.linspace(0.0, 1.0, (steps or self.steps) + 1, dtype=torch.float64).tolist()
        return sample_flow(v, x, grid, heun=self.sampler is FlowSampler.HEUN)


def _require_torchdiffeq() -> Any:
    try:
        import torchdiffeq
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("The dopri5 sampler needs torchdiffeq: pip install 'genunc-lightning[ode]'.") from err
    return torchdiffeq
