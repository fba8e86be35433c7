"""Gaussian diffusion (DDPM family): ε-, v- and x0-prediction; DDPM, DDIM, DPM-Solver or any diffusers scheduler."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

import torch
from torch import nn

from genunc_lightning import seeding
from genunc_lightning.adapters.base import DiffusionAdapter
from genunc_lightning.adapters.samplers import (
    DiscreteVPSchedule,
    NoiseSource,
    append_dims,
    check_scheduler,
    ddim_update,
    sample_ddim,
    sample_dpm_solver,
    sample_with_scheduler,
)


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
    """The built-in reverse-process samplers."""

    DDPM = "ddpm"
    DDIM = "ddim"
    DPM_SOLVER_2 = "dpm_solver_2"  # singlestep, noise prediction (Lu et al. 2022a)
    DPM_SOLVER_PP_2S = "dpm_solver++_2s"  # singlestep, data prediction: U-ViT's DPM_Solver(predict_x0=True), order 2
    DPM_SOLVER_PP_2M = "dpm_solver++_2m"  # multistep, data prediction (Lu et al. 2022b)


DPM_SOLVERS = (Sampler.DPM_SOLVER_2, Sampler.DPM_SOLVER_PP_2S, Sampler.DPM_SOLVER_PP_2M)
DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


class DDPMVariance(str, Enum):
    """The variance of an ancestral DDPM step (Ho et al. 2020, §3.2)."""

    FIXED_SMALL = "fixed_small"  # β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t: DDIM with η = 1
    FIXED_LARGE = "fixed_large"  # β_t, what many DDPM repositories sample with
    LEARNED_RANGE = "learned_range"  # improved-diffusion and ADM: between log β̃_t and log β_t, from the network


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
    float training timestep in [0, num_train_steps) (plus ``timestep_offset``); override
    ``call_denoiser`` for another signature.

    Args:
        denoiser: the network.
        last_layer: dotted name of its last layer.
        sample_shape: shape of one sample.
        num_classes: classes of a class-conditional model, or ``None``.
        prediction: ``eps``, ``v`` or ``x0``.
        schedule: ``linear``, ``scaled_linear`` or ``cosine``.
        num_train_steps: number of training timesteps.
        beta_start: first beta of the linear schedules.
        beta_end: last beta of the linear schedules.
        sampler: a built-in sampler (default ``ddim``): ``ddim`` (deterministic unless ``eta`` > 0),
            ``ddpm`` (ancestral: μ̃(x_t, x̂0) plus noise of variance ``ddpm_variance``), or DPM-Solver with
            ``steps`` network evaluations on a uniform time grid from t = 1 to 1/N (``sample_dpm_solver``):
            ``dpm_solver_2``, ``dpm_solver++_2s`` (U-ViT's and the paper's, 25 × 2 evaluations at
            ``steps=50``) or ``dpm_solver++_2m``.
        steps: default number of sampling steps (network evaluations).
        eta: DDIM noise scale; ``None`` means 0 for ``ddim`` and 1 for ``ddpm``.
        clip_denoised: clamp the predicted x0 to ``image_range`` at every step (ADM does for pixels).
        output_channels: the channels of the prediction (ADM and DiT learn the variance in the remaining
            ones); ``None``: all of the output is the prediction.
        image_range: data range of pixel images, mapped to [0, 1] by ``decode``.
        vae: an autoencoder for latent diffusion (see ``DiffusionAdapter``).
        ddpm_variance: for ``ddpm``: ``fixed_small`` (β̃_t; DDIM with η = 1), ``fixed_large`` (β_t), or
            ``learned_range`` (the network's remaining ``output_channels``, improved-diffusion's interpolation).
        guidance_scale: classifier-free guidance w (1: off); see ``DiffusionAdapter``.
        null_class: the unconditional label of a guided class-conditional model (U-ViT, DiT: ``num_classes``).
        timestep_respacing: guided-diffusion's syntax (``"ddim25"``, ``"250"``, ``"10,15,20"``) for ``ddim``
            and ``ddpm``: the sampler visits exactly the timesteps their ``space_timesteps`` keeps
            (``respaced_timesteps``), which sets the number of steps; ``None``: ``steps`` evenly spaced
            from T − 1 to 0.
        timestep_offset: added to t before the network sees it (U-ViT's network takes t + 1).
        scheduler: a diffusers scheduler to sample with instead of a built-in sampler (DPM-Solver++,
            UniPC, Euler, …: ``sample_with_scheduler``). Its ᾱ and ``prediction_type`` must be this
            adapter's (``DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
            beta_end=0.012)`` for U-ViT); the network sees its timesteps plus ``timestep_offset``.
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
        sampler: str | None = None,
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
        scheduler: Any | None = None,
    ) -> None:
        super().__init__(denoiser, last_layer, sample_shape, num_classes, image_range, vae, guidance_scale, null_class)
        self.timestep_respacing = timestep_respacing
        self.timestep_offset = int(timestep_offset)
        self.prediction = Prediction(prediction)
        if scheduler is not None and (sampler is not None or eta is not None or timestep_respacing is not None):
            raise ValueError(
                "A scheduler replaces the built-in sampler: leave sampler, eta and timestep_respacing unset (the "
                "scheduler's own config sets its timesteps and noise)."
            )
        # None with a scheduler: no built-in sampler runs, and code that needs one (the baselines) sees so
        self.sampler: Sampler | None = Sampler(sampler or "ddim") if scheduler is None else None
        self.ddpm_variance = DDPMVariance(ddpm_variance)
        if self.ddpm_variance is not DDPMVariance.FIXED_SMALL and (self.sampler is not Sampler.DDPM or eta is not None):
            raise ValueError(f"ddpm_variance={self.ddpm_variance.value!r} applies to sampler='ddpm' (without eta).")
        if self.ddpm_variance is DDPMVariance.LEARNED_RANGE and output_channels is None:
            raise ValueError(
                "ddpm_variance='learned_range' reads the variance from the network's output after the prediction: "
                "set output_channels to the prediction's channels (ADM: 3 of its 6)."
            )
        if self.sampler in DPM_SOLVERS and (eta is not None or timestep_respacing is not None):
            raise ValueError(f"sampler={self.sampler.value!r} takes neither eta nor timestep_respacing.")
        self.num_train_steps = int(num_train_steps)
        self.steps = int(steps)
        self.eta = float(eta) if eta is not None else (1.0 if self.sampler is Sampler.DDPM else 0.0)
        if clip_denoised and image_range is None:
            raise ValueError("clip_denoised needs image_range, the range to clamp the predicted x0 to.")
        if clip_denoised and scheduler is not None:
            raise ValueError("A scheduler clips by its own config (clip_sample=True): leave clip_denoised unset.")
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
        self.scheduler = self._checked_scheduler(scheduler) if scheduler is not None else None

    def _checked_scheduler(self, scheduler: Any) -> Any:
        """``scheduler``, once checked to be of this adapter's forward process (same ᾱ and parameterisation)."""
        check_scheduler(scheduler)
        config = scheduler.config
        theirs = getattr(scheduler, "alphas_cumprod", None)
        if theirs is None or len(theirs) != self.num_train_steps:
            size = "no alphas_cumprod" if theirs is None else f"{len(theirs)} training timesteps"
            raise ValueError(
                f"{type(scheduler).__name__} has {size}, this adapter {self.num_train_steps}: build the scheduler with "
                "num_train_timesteps and the betas the network was trained with."
            )
        gap = (theirs.double() - self.alphas_cumprod).abs().max().item()
        if gap > 1e-6:
            raise ValueError(
                f"{type(scheduler).__name__}'s ᾱ differs from this adapter's schedule by up to {gap:.3g}: give it the "
                "network's betas (beta_schedule, beta_start, beta_end, or trained_betas), or the adapter the "
                "scheduler's (schedule, beta_start, beta_end)."
            )
        wanted = DIFFUSERS_PREDICTION[self.prediction.value]
        if getattr(config, "prediction_type", wanted) != wanted:
            raise ValueError(
                f"{type(scheduler).__name__} has prediction_type={config.prediction_type!r}, but the network predicts "
                f"{self.prediction.value!r}: build the scheduler with prediction_type={wanted!r}."
            )
        return type(scheduler).from_config(config)  # a fresh one: a pipeline's own is changed by every call

    @property
    def fixed_steps(self) -> bool:
        """Whether the sampler's steps are fixed (a ``timestep_respacing``): members cannot use fewer."""
        return self._respaced is not None

    def timesteps(self, steps: int | None = None) -> list[int]:
        """The training timesteps the DDIM steps visit, noisiest first (``steps`` of them, or the respacing's).

        These are the steps of ``ddim`` and ``ddpm`` (and of the DDIM-based baselines); a DPM-Solver or a
        scheduler visits its own.
        """
        if self._respaced is not None:
            if steps not in (None, len(self._respaced)):
                raise ValueError(
                    f"timestep_respacing={self.timestep_respacing!r} fixes {len(self._respaced)} steps: leave steps "
                    f"unset (got {steps})."
                )
            return list(self._respaced)
        return sampling_timesteps(self.num_train_steps, steps or self.steps).tolist()

    def network_output(self, x: torch.Tensor, t: torch.Tensor, y: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the prediction in the network's parameterisation, its learned-variance output or ``None``)."""
        out = self.call_denoiser_checked(x, (t + self.timestep_offset).to(x.dtype), y)
        if self.output_channels is not None:
            return out[:, : self.output_channels], out[:, self.output_channels :]
        if out.shape != x.shape and out.dim() == x.dim() and out.shape[1] == 2 * x.shape[1]:
            raise ValueError(
                f"{type(self.denoiser).__name__} returns {out.shape[1]} channels for inputs of {x.shape[1]}: a network "
                f"that learns its variance (ADM, DiT). Set output_channels={x.shape[1]} to keep the prediction half."
            )
        return out, None

    def predict(self, x: torch.Tensor, t: torch.Tensor, y: Any) -> torch.Tensor:
        """The denoiser's output in its own parameterisation (learned-variance channels dropped)."""
        return self.network_output(x, t, y)[0]

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

    def _x0_and_eps(self, out: torch.Tensor, x: torch.Tensor, sa: Any, sb: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂0, ε̂) from the network's prediction ``out`` at x = sa·x0 + sb·ε (x̂0 clamped with ``clip_denoised``)."""
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

    def denoised(
        self, x: torch.Tensor, t: torch.Tensor, y: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(predicted x0, predicted ε, the variance output a learned-variance DDPM samples with, else ``None``).

        ``t``: the timestep, a LongTensor [B].
        """
        out, variance = self.network_output(x, t, y)
        x0, eps = self._x0_and_eps(out, x, *self._coefficients(t, x))
        return x0, eps, variance if self.ddpm_variance is DDPMVariance.LEARNED_RANGE else None

    def denoised_at(self, y: Any) -> Callable[[torch.Tensor, int], tuple[torch.Tensor, ...]]:
        """The denoiser as the DDIM steps call it: ``denoised`` at integer timestep ``t``, classes ``y``."""

        def denoised(x: torch.Tensor, t: int) -> tuple[torch.Tensor, ...]:
            return self.denoised(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), y)

        return denoised

    def _sample(self, seeds: torch.Tensor, classes: torch.Tensor | None, steps: int | None) -> torch.Tensor:
        noise = NoiseSource.like(seeds, self.denoiser)
        y = classes.to(noise.device) if classes is not None else None
        if self.scheduler is not None:
            return sample_with_scheduler(lambda x, t: self.predict(x, t, y), self.scheduler, steps or self.steps,
                                         noise, self.sample_shape)  # fmt: skip
        x = noise(*self.sample_shape)
        if self.sampler in DPM_SOLVERS:
            return self._sample_dpm_solver(x, y, steps or self.steps)
        timesteps = self.timesteps(steps)
        # A sample's noise for every step, drawn at once from its generator after its initial noise.
        step_noise = noise(len(timesteps), *self.sample_shape) if self.eta > 0 else None
        fixed_large = self.ddpm_variance is DDPMVariance.FIXED_LARGE
        return sample_ddim(self.denoised_at(y), x, timesteps, self.alpha_bars, self.eta, step_noise, fixed_large)

    def _sample_dpm_solver(self, x: torch.Tensor, y: Any, steps: int) -> torch.Tensor:
        schedule = DiscreteVPSchedule(self.alpha_bars)
        data_prediction = self.sampler is not Sampler.DPM_SOLVER_2

        def model(z: torch.Tensor, t: float) -> torch.Tensor:
            timestep = torch.full((z.shape[0],), schedule.timestep(t), device=z.device, dtype=torch.float64)
            alpha, sigma = math.exp(schedule.log_alpha(t)), schedule.sigma(t)
            x0, eps = self._x0_and_eps(self.predict(z, timestep, y), z, alpha, sigma)
            return x0 if data_prediction else eps

        multistep = self.sampler is Sampler.DPM_SOLVER_PP_2M
        return sample_dpm_solver(model, x, schedule, steps, multistep=multistep, data_prediction=data_prediction)

    def ddim_step(
        self,
        x: torch.Tensor,
        t: int,
        t_prev: int,
        y: torch.Tensor | None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One step of this adapter's DDIM or DDPM sampler from timestep ``t`` to ``t_prev`` (−1: the clean sample x̂0).

        ``noise`` (standard normal, shaped like ``x``) is needed when η > 0.
        """
        x0, eps, v = self.denoised_at(y)(x, t)
        if t_prev < 0:
            return x0
        fixed_large = self.ddpm_variance is DDPMVariance.FIXED_LARGE
        return ddim_update(x, x0, eps, self.alpha_bars[t], self.alpha_bars[t_prev], self.eta, noise, fixed_large, v)
