"""CompVis latent-diffusion and Stability stablediffusion LightningModules (``LatentDiffusion``).

Their code is not on the package index; the adapter relies only on this interface of theirs:
``apply_model(x, t, cond)``, ``alphas_cumprod``, ``num_timesteps``, ``parameterization``
(``eps``, ``x0`` or ``v``), ``get_input(batch, first_stage_key)`` (latents and conditioning of a
training batch), ``get_learned_conditioning(c)`` and ``decode_first_stage(z)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from genunc_lightning.adapters.base import require_interface
from genunc_lightning.adapters.gaussian import GaussianDiffusionAdapter

PARAMETERIZATION = {"eps": "eps", "x0": "x0", "v": "v"}


class LatentDiffusionAdapter(GaussianDiffusionAdapter):
    """Adapter for a CompVis/Stability ``LatentDiffusion`` module, used as it is.

    The whole LightningModule is the denoiser, so the last layer keeps its own name,
    ``model.diffusion_model.out.2``. Training batches go through the module's own ``get_input``
    (its first-stage encoder and conditioning); samples through ``decode_first_stage``.

    Args:
        ldm: the ``LatentDiffusion`` module.
        sample_shape: latent shape of one sample, e.g. [3, 64, 64].
        last_layer: dotted name of the last layer inside ``ldm``.
        num_classes: classes of a class-conditional model (``cin`` models), conditioned through
            ``get_learned_conditioning({class_key: labels})``.
        class_key: the conditioning key of class labels.
        sampler: ``ddim`` or ``ddpm``.
        steps: sampling steps.
        eta: DDIM noise scale.
        guidance_scale: classifier-free guidance w (1: off). A text model (``cond_stage_key`` ``caption``,
            ``txt`` or ``text``) takes prompts, encoded by ``get_learned_conditioning(prompts)``, and its
            unconditional branch is the empty prompt's conditioning, as their ``txt2img.py`` does; a
            class-conditional one needs ``null_class``.
        null_class: the unconditional label of a guided class-conditional model.
    """

    TEXT_KEYS = ("caption", "txt", "text")

    def __init__(
        self,
        ldm: nn.Module,
        sample_shape: Sequence[int],
        last_layer: str = "model.diffusion_model.out.2",
        num_classes: int | None = None,
        class_key: str = "class_label",
        sampler: str = "ddim",
        steps: int = 50,
        eta: float | None = None,
        guidance_scale: float = 1.0,
        null_class: int | None = None,
    ) -> None:
        self._text = getattr(ldm, "cond_stage_key", None) in self.TEXT_KEYS and num_classes is None
        interface = ("apply_model", "alphas_cumprod", "num_timesteps", "parameterization", "decode_first_stage")
        require_interface(ldm, interface, "LatentDiffusionAdapter", "a LatentDiffusion")
        if ldm.parameterization not in PARAMETERIZATION:
            raise ValueError(f"Unsupported parameterization {ldm.parameterization!r}; supported: eps, x0, v.")
        super().__init__(
            ldm, last_layer, sample_shape, num_classes, prediction=PARAMETERIZATION[ldm.parameterization],
            num_train_steps=int(ldm.num_timesteps), sampler=sampler, steps=steps, eta=eta, image_range=(-1.0, 1.0),
            guidance_scale=guidance_scale, null_class=null_class,
        )  # fmt: skip
        # Their schedule, not a recomputed one.
        self.alphas_cumprod = ldm.alphas_cumprod.detach().double().cpu()
        self.alpha_bars = self.alphas_cumprod.tolist()  # what the samplers read (ᾱ as Python floats)
        self.class_key = class_key

    @property
    def takes_prompts(self) -> bool:  # type: ignore[override]
        """Whether the module is a text model (its ``cond_stage_key`` is a caption key)."""
        return self._text

    def encode_prompts(self, prompts: list[str], negative: bool = False) -> torch.Tensor:
        """``get_learned_conditioning(prompts)``, as their ``txt2img.py`` encodes prompts (``""``: unconditional)."""
        if not self._text:
            return super().encode_prompts(prompts, negative)
        with torch.no_grad():
            return self.denoiser.get_learned_conditioning(list(prompts))

    def conditioning(self, y: torch.Tensor | None) -> Any:
        """The module's learned conditioning of class labels (a text model's ``y`` is encoded already), or None."""
        if y is None or self._text:
            return y
        return self.denoiser.get_learned_conditioning({self.class_key: y})

    def call_denoiser(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """``apply_model`` with integer timesteps and learned conditioning."""
        return self.denoiser.apply_model(x, t.round().long(), self.conditioning(y))

    def training_data(self, batch: Any) -> tuple[torch.Tensor, Any]:
        """Latents and encoded conditioning from the module's own ``get_input``."""
        get_input = self.denoiser.get_input
        # A trainable cond stage returns raw conditioning unless forced to encode it (as their forward does).
        kwargs = {"force_c_encode": True} if "force_c_encode" in inspect.signature(get_input).parameters else {}
        z, cond = get_input(batch, self.denoiser.first_stage_key, **kwargs)[:2]
        return self.check_data_shape(z), cond

    def predict_conditioned(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        """``apply_model`` with already encoded conditioning."""
        return self.denoiser.apply_model(x, t, cond)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] through the module's first stage."""
        with torch.no_grad():
            return super().decode(self.denoiser.decode_first_stage(x))
