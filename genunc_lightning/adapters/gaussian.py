"""Gaussian diffusion (DDPM family): ε-, v- and x0-prediction; DDPM and DDIM samplers."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

import torch
from torch import nn

from genunc_lightning import seeding
from genunc_lightning.adapters.base import DiffusionAdapter
from genunc_lightning.adapters.samplers import NoiseSource, append_dims, ddim_update, sample_ddim


class Prediction(str, Enum):
    """What the denoiser predicts."""

    EPS = "eps"
    V = "v"
    X0 = "x0"


class Schedule(str, Enum):
    """Noise schedule of the forward process."""

    LINEAR = "linear"
    COSINE = "cosine"
    SCALED_LINEAR = "scaled_linear"  # LDM, Stable Diffusion, U-ViT: √β linear in t


class Sampler(str, Enum):
    """Reverse-process sampler."""

    DDPM = "ddpm"
    DDIM = "ddim"


class DDPMVariance(str, Enum):
    """The variance of an ancestral DDPM step (Ho et al. 2020, §3.2)."""

    FIXED_SMALL = "fixed_small"  # β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t: DDIM with η = 1
    FIXED_LARGE = "fixed_large"  # β_t, what many DDPM repositories sample with


def alphas_cumprod(schedule: str, num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """ᾱ_t for t = 0 … num_steps − 1 in float64.

    ``linear``: Ho et al. (2020) betas from ``beta_start`` to ``beta_end``. ``scaled_linear``: betas
    whose square roots are linear from √``beta_start`` to √``beta_end`` (LDM, Stable Diffusion and
    U-ViT, with 0.00085 and 0.012). ``cosine``: Nichol and Dhariwal (2021), betas clipped at 0.999.
    """
    schedule = Schedule(schedule)
    if schedule is Schedule.LINEAR:
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    elif schedule is Schedule.SCALED_LINEAR:
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    else:
        s = 0.008
        steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1.0 - betas, dim=0)


def sampling_timesteps(num_train_steps: int, steps: int) -> torch.Tensor:
    """Evenly spaced training timesteps from the noisiest down to 0, ``steps`` of them."""
    if not 1 <= steps <= num_train_steps:
        raise ValueError(f"steps must be in [1, {num_train_steps}], got {steps}.")
    return torch.linspace(num_train_steps - 1, 0, steps, dtype=torch.float64).round().long()


def respaced_timesteps(num_train_steps: int, section_counts: str) -> list[int]:
    """The training timesteps guided-diffusion's ``timestep_respacing`` keeps, ascending.

    ``"ddimN"``: the smallest integer stride s with ``len(range(0, T, s)) == N``, giving 0, s, 2s, …
    ``"N"`` or ``"N,M,…"``: the T steps are cut into as many equal sections as counts (the first
    ``T mod sections`` one step longer), and each section's count taken at fractional stride
    (size − 1)/(count − 1) from its start, the stride summed in floating point and each index rounded
    (one count: the section's first step).

    Raises:
        ValueError: a count larger than its section, or a "ddim" count no integer stride gives.
    """
    if section_counts.startswith("ddim"):
        desired = int(section_counts[len("ddim") :])
        for stride in range(1, num_train_steps):
            if len(range(0, num_train_steps, stride)) == desired:
                return list(range(0, num_train_steps, stride))
        raise ValueError(f"timestep_respacing={section_counts!r}: no integer stride gives exactly {desired} steps.")
    counts = [int(c) for c in section_counts.split(",")]
    size_per, extra = divmod(num_train_steps, len(counts))
    steps, start = [], 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(
                f"timestep_respacing={section_counts!r}: cannot take {count} steps of a section of {size}."
            )
        stride = (size - 1) / (count - 1) if count > 1 else 1
        position = 0.0
        for _ in range(count):  # accumulated, not j · stride: their float sums decide 499 against 500
            steps.append(start + round(position))
            position += stride
        start += size
    return sorted(set(steps))


class GaussianDiffusionAdapter(DiffusionAdapter):
    """Adapter for a denoiser trained on the Gaussian forward process x_t = √ᾱ x0 + √(1−ᾱ) ε.

    The denoiser is called as ``denoiser(x_t, t)`` or ``denoiser(x_t, t, y)`` with ``t`` the
    float training timestep in [0, num_train_steps); override ``call_denoiser`` for another
    signature.

    Args:
        denoiser: the network.
        last_layer: dotted name of its last layer.
        sample_shape: shape of one sample.
        num_classes: classes of a class-conditional model, or ``None``.
        prediction: ``eps``, ``v`` or ``x0``.
        schedule: ``linear`` or ``cosine``.
        num_train_steps: number of training timesteps.
        beta_start: first beta of the linear schedule.
        beta_end: last beta of the linear schedule.
        sampler: ``ddim`` (deterministic unless ``eta`` > 0) or ``ddpm`` (ancestral: the posterior mean
            μ̃(x_t, x̂0) plus noise of variance ``ddpm_variance``).
        steps: default number of sampling steps.
        eta: DDIM noise scale; ``None`` means 0 for ``ddim`` and 1 for ``ddpm``.
        clip_denoised: clamp the predicted x0 to ``image_range`` at every step (ADM does for pixels).
        output_channels: keep only the first channels of the output (ADM and DiT learn the variance
            in the remaining channels); ``None`` keeps all.
        image_range: data range of pixel images, mapped to [0, 1] by ``decode``.
        vae: an autoencoder for latent diffusion (see ``DiffusionAdapter``).
        ddpm_variance: ``fixed_small`` (β̃_t; DDIM with η = 1) or ``fixed_large`` (β_t) for ``ddpm``.
        guidance_scale: classifier-free guidance w (1: off); see ``DiffusionAdapter``.
        null_class: the unconditional label of a guided class-conditional model (U-ViT, DiT: ``num_classes``).
        timestep_respacing: guided-diffusion's syntax (``"ddim25"``, ``"250"``, ``"10,15,20"``): the
            sampler visits exactly the timesteps their ``space_timesteps`` keeps (``respaced_timesteps``),
            which sets the number of steps; ``None``: ``steps`` evenly spaced from T − 1 to 0.
        timestep_offset: added to t before the network sees it (U-ViT's network takes t + 1).
    """

    def __init__(
        self,
        denoiser: nn.Module,
        last_layer: str,
        sample_shape: Sequence[int],
        num_classes: int | None = None,
        prediction: str = "eps",
        schedule: str = "linear",
        num_train_steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        sampler: str = "ddim",
        steps: int = 50,
        eta: float | None = None,
        clip_denoised: bool = False,
        output_channels: int | None = None,
        image_range: tuple[float, float] | None = None,
        vae: nn.Module | None = None,
        ddpm_variance: str = "fixed_small",
        guidance_scale: float = 1.0,
        null_class: int | None = None,
        timestep_respacing: str | None = None,
        timestep_offset: int = 0,
    ) -> None:
        super().__init__(denoiser, last_layer, sample_shape, num_classes, image_range, vae, guidance_scale, null_class)
        self.timestep_respacing = timestep_respacing
        self.timestep_offset = int(timestep_offset)
        self.prediction = Prediction(prediction)
        self.sampler = Sampler(sampler)
        self.ddpm_variance = DDPMVariance(ddpm_variance)
        if self.ddpm_variance is DDPMVariance.FIXED_LARGE and (self.sampler is not Sampler.DDPM or eta is not None):
            raise ValueError("ddpm_variance='fixed_large' applies to sampler='ddpm' (without eta).")
        self.num_train_steps = int(num_train_steps)
        self.steps = int(steps)
        self.eta = float(eta) if eta is not None else (1.0 if self.sampler is Sampler.DDPM else 0.0)
        if clip_denoised and image_range is None:
            raise ValueError("clip_denoised needs image_range, the range to clamp the predicted x0 to.")
        self.clip_denoised = clip_denoised
        self.output_channels = output_channels
        self.register_buffer(
            "alphas_cumprod", alphas_cumprod(schedule, self.num_train_steps, beta_start, beta_end), persistent=False
        )
        self._respaced = None
        if timestep_respacing is not None:
            self._respaced = respaced_timesteps(self.num_train_steps, timestep_respacing)[::-1]
            self.steps = len(self._respaced)
        sampling_timesteps(self.num_train_steps, self.steps)
        self.alpha_bars: list[float] = self.alphas_cumprod.tolist()  # ᾱ_t as Python floats: no device syncs

    @property
    def fixed_steps(self) -> bool:
        """Whether the sampler's steps are fixed (a ``timestep_respacing``): members cannot use fewer."""
        return self._respaced is not None

    def timesteps(self, steps: int | None = None) -> list[int]:
        """The training timesteps the sampler visits, noisiest first (``steps`` of them, or the respacing's)."""
        if self._respaced is not None:
            if steps not in (None, len(self._respaced)):
                raise ValueError(
                    f"timestep_respacing={self.timestep_respacing!r} fixes {len(self._respaced)} steps: leave steps "
                    f"unset (got {steps})."
                )
            return list(self._respaced)
        return sampling_timesteps(self.num_train_steps, steps or self.steps).tolist()

    def predict(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The denoiser's output in its own parameterisation (learned-variance channels dropped)."""
        out = self.call_denoiser_checked(x, (t + self.timestep_offset).to(x.dtype), y)
        if self.output_channels is not None:
            return out[:, : self.output_channels]
        if out.shape != x.shape and out.dim() == x.dim() and out.shape[1] == 2 * x.shape[1]:
            raise ValueError(
                f"{type(self.denoiser).__name__} returns {out.shape[1]} channels for inputs of {x.shape[1]}: a network "
                f"that learns its variance (ADM, DiT). Set output_channels={x.shape[1]} to keep the prediction half."
            )
        return out

    def _coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The schedule follows the data's device, also when the adapter itself was not moved.
        a = append_dims(self.alphas_cumprod.to(t.device)[t].to(like.dtype), like.dim())
        return a.sqrt(), (1 - a).sqrt()

    def predict_conditioned(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """The prediction given the conditioning that ``training_data`` returns (class labels here)."""
        return self.predict(x, t, cond)

    def residual(self, batch: Any, seeds: torch.Tensor) -> torch.Tensor:
        """Prediction − target at a per-example uniform t and Gaussian noise (see base class)."""
        x0, cond = self.training_data(batch)
        gens = seeding.generators(seeds, x0.device)
        t = seeding.randint(gens, self.num_train_steps, x0.device)
        eps = seeding.randn(gens, x0.shape[1:], x0.device, x0.dtype)
        sa, sb = self._coefficients(t, x0)
        xt = sa * x0 + sb * eps
        target = {Prediction.EPS: eps, Prediction.X0: x0, Prediction.V: sa * eps - sb * x0}[self.prediction]
        return self.predict_conditioned(xt, t, cond) - target

    def denoised(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted x0, predicted ε) at timestep ``t`` (a LongTensor [B])."""
        out = self.predict(x, t, y)
        sa, sb = self._coefficients(t, x)
        if self.prediction is Prediction.EPS:
            eps, x0 = out, (x - sb * out) / sa
        elif self.prediction is Prediction.X0:
            x0, eps = out, (x - sa * out) / sb
        else:
            x0, eps = sa * x - sb * out, sb * x + sa * out
        if self.clip_denoised:
            x0 = x0.clamp(*self.image_range)
            eps = (x - sa * x0) / sb
        return x0, eps

    def denoised_at(self, y: torch.Tensor | None) -> Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]:
        """The denoiser as the samplers call it: ``(x, t) -> (x̂0, ε̂)`` at integer timestep ``t``, classes ``y``."""

        def denoised(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
            return self.denoised(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), y)

        return denoised

    def _sample(self, seeds: torch.Tensor, classes: torch.Tensor | None, steps: int | None) -> torch.Tensor:
        noise = NoiseSource.like(seeds, self.denoiser)
        x = noise(*self.sample_shape)
        y = classes.to(noise.device) if classes is not None else None
        timesteps = self.timesteps(steps)
        # A sample's noise for every step, drawn at once from its generator after its initial noise.
        step_noise = noise(len(timesteps), *self.sample_shape) if self.eta > 0 else None
        fixed_large = self.ddpm_variance is DDPMVariance.FIXED_LARGE
        return sample_ddim(self.denoised_at(y), x, timesteps, self.alpha_bars, self.eta, step_noise, fixed_large)

    def ddim_step(
        self,
        x: torch.Tensor,
        t: int,
        t_prev: int,
        y: torch.Tensor | None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One step of this adapter's sampler from timestep ``t`` to ``t_prev`` (−1: the clean sample x̂0).

        ``noise`` (standard normal, shaped like ``x``) is needed when η > 0.
        """
        x0, eps = self.denoised_at(y)(x, t)
        if t_prev < 0:
            return x0
        fixed_large = self.ddpm_variance is DDPMVariance.FIXED_LARGE
        return ddim_update(x, x0, eps, self.alpha_bars[t], self.alpha_bars[t_prev], self.eta, noise, fixed_large)
