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
    """

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
    ) -> None:
        interface = ("apply_model", "alphas_cumprod", "num_timesteps", "parameterization", "decode_first_stage")
        require_interface(ldm, interface, "LatentDiffusionAdapter", "a LatentDiffusion")
        if ldm.parameterization not in PARAMETERIZATION:
            raise ValueError(f"Unsupported parameterization {ldm.parameterization!r}; supported: eps, x0, v.")
        super().__init__(
            ldm, last_layer, sample_shape, num_classes, prediction=PARAMETERIZATION[ldm.parameterization],
            num_train_steps=int(ldm.num_timesteps), sampler=sampler, steps=steps, eta=eta, image_range=(-1.0, 1.0),
        )  # fmt: skip
        # Their schedule, not a recomputed one.
        self.alphas_cumprod = ldm.alphas_cumprod.detach().double().cpu()
        self._schedule = self.alphas_cumprod.tolist()
        self.class_key = class_key

    def conditioning(self, y: torch.Tensor | None) -> Any:
        """The module's learned conditioning of class labels, or None."""
        if y is None:
            return None
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
