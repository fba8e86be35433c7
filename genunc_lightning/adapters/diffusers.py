"""diffusers models and schedulers (optional extra: ``pip install genunc-lightning[diffusers]``).

Importing this module needs no diffusers; constructing ``DiffusersAdapter`` does.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from genunc_lightning import seeding
from genunc_lightning.adapters.base import DiffusionAdapter
from genunc_lightning.adapters.samplers import NoiseSource

SUPPORTED_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler")
DEFAULT_LAST_LAYER = {
    "UNet2DModel": "conv_out",
    "UNet2DConditionModel": "conv_out",
    "DiTTransformer2DModel": "proj_out_2",
}


def _require_diffusers() -> Any:
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("DiffusersAdapter needs diffusers: pip install 'genunc-lightning[diffusers]'.") from err
    return diffusers


class DiffusersAdapter(DiffusionAdapter):
    """Adapter for diffusers' UNet2DModel, UNet2DConditionModel and DiTTransformer2DModel.

    The Fisher loss follows the scheduler's ``prediction_type`` (``epsilon``, ``v_prediction``,
    ``sample``). A model that learns its variance (output channels = 2 × input channels, as DiT)
    contributes only the first half, the prediction, to the loss and the sampler. With a ``vae``,
    the model is a latent model: training images are encoded to latent means (× the VAE's scaling
    factor) and samples are decoded before any feature extractor sees them.

    Sampling runs a copy of the scheduler per call (multistep schedulers keep state), and each
    sample's noise (initial and per step) comes from its own seeded generator.

    Args:
        denoiser: the diffusers model.
        scheduler: a ``DDPMScheduler``, ``DDIMScheduler`` or ``DPMSolverMultistepScheduler``.
        sample_shape: shape of one sample (latent shape for latent models).
        last_layer: dotted name of the last layer (default: ``conv_out`` for UNets, ``proj_out_2`` for DiT).
        num_classes: classes for class-conditional models (``class_labels``).
        steps: sampling steps.
        encoder_hidden_states: fixed cross-attention conditioning for UNet2DConditionModel, shape
            [1, tokens, dim] (e.g. the embedding of an empty prompt).
        vae: an ``AutoencoderKL`` for latent models, or ``None``.
        image_range: pixel range of the data (of the VAE's output for latent models).
    """

    def __init__(
        self,
        denoiser: nn.Module,
        scheduler: Any,
        sample_shape: Sequence[int],
        last_layer: str | None = None,
        num_classes: int | None = None,
        steps: int = 50,
        encoder_hidden_states: torch.Tensor | None = None,
        vae: nn.Module | None = None,
        image_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        _require_diffusers()
        kind = type(denoiser).__name__
        if last_layer is None:
            if kind not in DEFAULT_LAST_LAYER:
                raise ValueError(f"Name the last layer of a {kind}: defaults exist for {sorted(DEFAULT_LAST_LAYER)}.")
            last_layer = DEFAULT_LAST_LAYER[kind]
        super().__init__(denoiser, last_layer, sample_shape, num_classes, image_range, vae)
        if type(scheduler).__name__ not in SUPPORTED_SCHEDULERS:
            raise ValueError(
                f"{type(scheduler).__name__} is not supported; supported schedulers: {', '.join(SUPPORTED_SCHEDULERS)}."
            )
        if kind == "UNet2DConditionModel" and encoder_hidden_states is None:
            raise ValueError("A UNet2DConditionModel needs encoder_hidden_states (e.g. an empty prompt's embedding).")
        self.scheduler = scheduler
        self.steps = int(steps)
        self.prediction_type = scheduler.config.prediction_type
        if encoder_hidden_states is not None:
            self.register_buffer("encoder_hidden_states", encoder_hidden_states.detach(), persistent=False)
        else:
            self.encoder_hidden_states = None
        in_ch = getattr(denoiser.config, "in_channels", sample_shape[0])
        out_ch = getattr(denoiser.config, "out_channels", in_ch) or in_ch
        self.prediction_channels = in_ch if out_ch == 2 * in_ch else None
        self._step_takes_noise = "variance_noise" in inspect.signature(scheduler.step).parameters

    def call_denoiser(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The model's prediction (the first half of the channels when it learns its variance)."""
        kwargs: dict[str, Any] = {}
        if y is not None:
            kwargs["class_labels"] = y
        if self.encoder_hidden_states is not None:
            ehs = self.encoder_hidden_states.to(x.dtype)
            kwargs["encoder_hidden_states"] = ehs.expand(x.shape[0], *ehs.shape[1:])
        if type(self.denoiser).__name__ == "DiTTransformer2DModel":
            out = self.denoiser(x, timestep=t, **kwargs).sample
        else:
            out = self.denoiser(x, t, **kwargs).sample
        return out[:, : self.prediction_channels] if self.prediction_channels else out

    def residual(self, batch: Any, seeds: torch.Tensor) -> torch.Tensor:
        """Prediction − target at a per-example training timestep and Gaussian noise."""
        x0, y = self.training_data(batch)
        gens = seeding.generators(seeds, x0.device)
        t = seeding.randint(gens, self.scheduler.config.num_train_timesteps, x0.device)
        eps = seeding.randn(gens, x0.shape[1:], x0.device, x0.dtype)
        xt = self.scheduler.add_noise(x0, eps, t)
        if self.prediction_type == "epsilon":
            target = eps
        elif self.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(x0, eps, t)
        elif self.prediction_type == "sample":
            target = x0
        else:
            raise ValueError(f"Unsupported prediction_type {self.prediction_type!r}.")
        return self.call_denoiser_checked(xt, t, y) - target

    def _sample(self, seeds: torch.Tensor, classes: torch.Tensor | None, steps: int | None) -> torch.Tensor:
        source = NoiseSource.like(seeds, self.denoiser)
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(steps or self.steps, device=source.device)
        x = source(*self.sample_shape) * scheduler.init_noise_sigma
        timesteps = list(scheduler.timesteps)
        noise = source(len(timesteps), *self.sample_shape)
        y = classes.to(source.device) if classes is not None else None
        for i, t in enumerate(timesteps):
            tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
            out = self.call_denoiser_checked(scheduler.scale_model_input(x, t), tt, y)
            if self._step_takes_noise:
                x = scheduler.step(out, t, x, variance_noise=noise[:, i]).prev_sample
            else:  # DDPMScheduler draws its noise itself: one generator per sample keeps it per-seed
                x = scheduler.step(out, t, x, generator=source.generators).prev_sample
        return x
