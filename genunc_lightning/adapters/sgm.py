"""Stability's sgm ``DiffusionEngine`` (generative-models), used as it is.

The adapter relies only on this interface of theirs: ``model`` (the OpenAIWrapper around
``diffusion_model``), ``denoiser(network, x, sigma, cond)`` returning the denoised x̂0 (with its
``sigmas`` buffer, as ``DiscreteDenoiser`` has), ``conditioner(batch)`` returning the conditioning
dict, ``get_input(batch)``, ``encode_first_stage`` and ``decode_first_stage``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from genunc_lightning import seeding
from genunc_lightning.adapters.base import Condition, DiffusionAdapter, require_interface
from genunc_lightning.adapters.samplers import NoiseSource, append_dims, sample_euler_sigmas


class SGMAdapter(DiffusionAdapter):
    """Adapter for a Stability sgm ``DiffusionEngine`` with a discrete σ schedule.

    Training residual (Fisher): at a σ drawn uniformly from the denoiser's ``sigmas`` and noise n,
    x = x0 + σ·n, the residual is (D(x, σ) − x0) / c_out(σ), the network output minus its target
    (ε for EpsScaling, v for VScaling). c_out(σ) comes from the engine's own scaling, read off
    ``denoiser.scaling(sigma)``.

    Sampling: deterministic Euler (sgm's EulerEDMSampler without churn) over ``steps`` σ values
    spaced evenly in index over the denoiser's ``sigmas``, then 0; x_T = n·√(1 + σ_max²) as sgm does.

    Guidance is sgm's ``VanillaCFG``: one call of the denoiser on ``[x; x]`` with ``[uc; c]``, then
    x̂0_u + w·(x̂0_c − x̂0_u). A text engine (its conditioner has an embedder of ``text_key``) takes prompts,
    encoded by its conditioner; its unconditional branch is the negative (by default empty) prompt with
    the text embedder's output zeroed, as their sampling scripts' ``force_uc_zero_embeddings=["txt"]``.

    Args:
        engine: the ``DiffusionEngine``.
        sample_shape: latent shape of one sample.
        last_layer: dotted name of the last layer inside ``engine``.
        num_classes: classes of a class-conditional engine, passed to the conditioner as ``class_key``.
        class_key: the batch key of class labels for the conditioner.
        steps: sampling steps.
        guidance_scale: classifier-free guidance w (1: off).
        null_class: the unconditional label of a guided class-conditional engine.
        text_key: the batch key of captions for the conditioner.
        zero_unconditional_text: zero the text embedder's output in the unconditional branch.
    """

    def __init__(
        self,
        engine: nn.Module,
        sample_shape: Sequence[int],
        last_layer: str = "model.diffusion_model.out.2",
        num_classes: int | None = None,
        class_key: str = "cls",
        steps: int = 50,
        guidance_scale: float = 1.0,
        null_class: int | None = None,
        text_key: str = "txt",
        zero_unconditional_text: bool = True,
    ) -> None:
        embedders = getattr(getattr(engine, "conditioner", None), "embedders", [])
        self._text = num_classes is None and any(getattr(e, "input_key", None) == text_key for e in embedders)
        interface = ("model", "denoiser", "conditioner", "decode_first_stage", "encode_first_stage", "get_input")
        require_interface(engine, interface, "SGMAdapter", "an sgm DiffusionEngine")
        if not hasattr(engine.denoiser, "sigmas"):
            raise ValueError("SGMAdapter supports denoisers with a discrete sigma schedule (DiscreteDenoiser).")
        super().__init__(engine, last_layer, sample_shape, num_classes, (-1.0, 1.0), None, guidance_scale, null_class)
        self.class_key, self.steps = class_key, int(steps)
        self.text_key, self.zero_unconditional_text = text_key, zero_unconditional_text

    @property
    def takes_prompts(self) -> bool:  # type: ignore[override]
        """Whether the engine's conditioner embeds captions (``text_key``)."""
        return self._text

    def encode_prompts(self, prompts: list[str], negative: bool = False) -> dict:
        """The conditioner's output for captions; for the unconditional branch, the text embedder's zeroed."""
        if not self._text:
            return super().encode_prompts(prompts, negative)
        zero = [self.text_key] if negative and self.zero_unconditional_text else None
        with torch.no_grad():
            return self.denoiser.conditioner({self.text_key: list(prompts)}, force_zero_embeddings=zero)

    @property
    def sigmas(self) -> torch.Tensor:
        """The engine's discrete σ schedule, ascending."""
        return self.denoiser.denoiser.sigmas

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        """The engine's denoised estimate D(x, σ)."""
        return self.denoiser.denoiser(self.denoiser.model, x, sigma, cond)

    def conditioning(self, classes: torch.Tensor | None, batch_size: int) -> dict:
        """The conditioner's output for class labels (or for an empty batch of the right size)."""
        batch = {self.class_key: classes} if classes is not None else {}
        return self.denoiser.conditioner(batch) if batch else {}

    def residual(self, batch: Any, seeds: torch.Tensor) -> torch.Tensor:
        """(D(x0 + σn, σ) − x0) / c_out(σ): the network output minus its target."""
        engine = self.denoiser
        x0 = self.check_data_shape(engine.encode_first_stage(engine.get_input(batch)))
        cond = engine.conditioner(batch)
        gens = seeding.generators(seeds, x0.device)
        sigmas = self.sigmas.to(x0.device)
        sigma = sigmas[seeding.randint(gens, len(sigmas), x0.device)].to(x0.dtype)
        noise = seeding.randn(gens, x0.shape[1:], x0.device, x0.dtype)
        sb = append_dims(sigma, x0.dim())
        c_out = engine.denoiser.scaling(sb)[1]
        return (self.denoise(x0 + sb * noise, sigma, cond) - x0) / c_out

    def _denoise_with(self, x: torch.Tensor, sigma: torch.Tensor, conditioning: Any) -> torch.Tensor:
        """D(x, σ) for a network conditioning: the conditioner's dict, or class labels (or ``None``)."""
        if not isinstance(conditioning, dict):
            conditioning = self.conditioning(conditioning, x.shape[0])
        return self.denoise(x, sigma, conditioning)

    def _sample(self, seeds: torch.Tensor, classes: Condition | None, steps: int | None) -> torch.Tensor:
        noise = NoiseSource.like(seeds, self.denoiser)
        sigmas = self.sigmas.to(noise.device, noise.dtype)
        idx = torch.linspace(len(sigmas) - 1, 0, steps or self.steps, dtype=torch.float64).round().long().tolist()
        schedule = [sigmas[i] for i in idx] + [torch.zeros((), device=noise.device, dtype=noise.dtype)]
        x = noise(*self.sample_shape) * math.sqrt(1 + float(schedule[0]) ** 2)
        condition = classes.to(noise.device) if classes is not None else None
        return sample_euler_sigmas(lambda z, s: self.guided(self._denoise_with, z, s, condition), x, schedule)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] through the engine's first stage."""
        with torch.no_grad():
            return super().decode(self.denoiser.decode_first_stage(x))
