"""The adapter contract: the one seam between a user's diffusion model and everything else.

An adapter names the denoiser whose last layer is Bayesian, computes the per-example training
residual from a batch and per-example seeds, and runs the sampler with optional last-layer
weights. Everything downstream (the Fisher pass, the posterior, scored sampling) talks to an
adapter only, never to the user's module directly.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genunc_lightning.adapters.layers import (
    LastLayerError,
    LastLayerWeights,
    original_module,
    resolve_last_layer,
    use_last_layer_weights,
)
from genunc_lightning.checkpoints import load_weights_into
from genunc_lightning.data.batches import data_range_problem, unpack_batch
from genunc_lightning.fingerprints import fingerprint, scalar_settings


class DenoiserCallError(TypeError):
    """The denoiser cannot be called the way the adapter calls it (``call_denoiser``)."""


def require_interface(obj: Any, attributes: Sequence[str], needed_by: str, kind: str) -> None:
    """Raises a TypeError naming the first missing attribute of a foreign model's interface."""
    for attr in attributes:
        if not hasattr(obj, attr):
            raise TypeError(f"{type(obj).__name__} has no {attr!r}: {needed_by} needs {kind}.")


class DiffusionAdapter(nn.Module):
    """The contract every model family implements (see DESIGN.md, "The seams").

    Subclasses implement ``residual`` (training) and ``_sample`` (generation); the base class
    provides the loss, last-layer resolution, weight swapping and checkpoint loading.

    Args:
        denoiser: the network whose last layer is Bayesian.
        last_layer: dotted name of that layer inside ``denoiser``.
        sample_shape: shape of one sample, without the batch dimension.
        num_classes: number of classes for class-conditional models, ``None`` for unconditional.
        image_range: for image models, the (low, high) range of the pixels; ``decode`` maps it to
            [0, 1]. ``None`` for data that is not an image (``decode`` is the identity).
        vae: for latent models, an autoencoder with ``encode(x).latent_dist`` and ``decode(z).sample``
            (diffusers' AutoencoderKL) and ``config.scaling_factor``: training images are encoded to
            latent means × the scaling factor, samples decoded before any feature extractor.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        last_layer: str,
        sample_shape: Sequence[int],
        num_classes: int | None = None,
        image_range: tuple[float, float] | None = None,
        vae: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.vae = vae
        self.last_layer = last_layer
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.num_classes = num_classes
        self.image_range = tuple(image_range) if image_range is not None else None
        resolve_last_layer(denoiser, last_layer)

    @property
    def last_layer_module(self) -> nn.Module:
        """The Bayesian last layer itself."""
        return resolve_last_layer(self.denoiser, self.last_layer)

    def residual(self, batch: Any, seeds: torch.Tensor) -> torch.Tensor:
        """Per-example prediction minus target of the training loss, shape [B, ...].

        Args:
            batch: a training batch (see ``unpack_batch``).
            seeds: one seed per example; every random draw of example b (its t and noise) comes
                from a generator seeded with ``seeds[b]``.
        """
        raise NotImplementedError

    def loss(self, batch: Any, seeds: torch.Tensor) -> torch.Tensor:
        """Per-example ½‖prediction − target‖² [B]: the unit-variance Gaussian NLL whose Fisher the posterior uses."""
        return 0.5 * self.residual(batch, seeds).flatten(1).pow(2).sum(1)

    @torch.no_grad()
    def sample(
        self,
        seeds: torch.Tensor,
        classes: torch.Tensor | None = None,
        steps: int | None = None,
        weights: LastLayerWeights | None = None,
    ) -> torch.Tensor:
        """Samples [B, *sample_shape] in the model's space, one per seed, with ``weights`` in the last layer.

        Args:
            seeds: one seed per sample; its initial noise and sampler noise come from it alone.
            classes: class labels for conditional models.
            steps: number of sampler steps (the adapter's default when ``None``).
            weights: last-layer weights to sample with (``None``: the pretrained ones).
        """
        if self.num_classes is not None and classes is None:
            raise ValueError(f"This model is class-conditional ({self.num_classes} classes): pass classes.")
        return self._sample_with_weights(seeds, classes, steps, weights)

    def _sample_with_weights(
        self, seeds: torch.Tensor, classes: torch.Tensor | None, steps: int | None, weights: LastLayerWeights | None
    ) -> torch.Tensor:
        """How weight sets reach the sampler; by default one hook for the whole batch (``use_last_layer_weights``)."""
        with use_last_layer_weights(self.last_layer_module, weights):
            return self._sample(seeds, classes, steps)

    def _sample(self, seeds: torch.Tensor, classes: torch.Tensor | None, steps: int | None) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def check_last_layer_reached(self) -> None:
        """Runs the sampler for one step on one sample; raises unless the last layer was called.

        Raises:
            LastLayerError: the forward pass never reaches ``last_layer`` (then neither the Fisher nor
                the posterior's weights would ever touch the samples).
        """
        calls = []
        handle = self.last_layer_module.register_forward_hook(lambda *_: calls.append(1))
        try:
            classes = torch.zeros(1, dtype=torch.long) if self.num_classes is not None else None
            self.sample(torch.zeros(1, dtype=torch.long), classes, steps=1)
        finally:
            handle.remove()
        if not calls:
            raise LastLayerError(
                f"The forward pass of {type(self.denoiser).__name__} never reaches {self.last_layer!r}: name the layer "
                "that produces the prediction (for diffusers UNets conv_out, for DiT proj_out_2)."
            )

    @torch.no_grad()
    def encode(self, data: torch.Tensor) -> torch.Tensor:
        """Training data to the model's space: latent means × scaling factor with a VAE, else itself."""
        if self.vae is None:
            return data
        return self.vae.encode(data).latent_dist.mean * self.vae.config.scaling_factor

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Maps samples to what people look at: images in [0, 1] for image models (VAE-decoded latents)."""
        if self.vae is not None:
            with torch.no_grad():
                x = self.vae.decode(x / self.vae.config.scaling_factor).sample
        if self.image_range is None:
            return x
        low, high = self.image_range
        return ((x - low) / (high - low)).clamp(0.0, 1.0)

    def manifest_entry(self) -> dict[str, Any]:
        """What identifies this model in a run manifest: class, scalar settings and a weight fingerprint.

        The fingerprint covers the denoiser's parameters and every buffer of the adapter (e.g. the noise
        schedule), so two runs with different weights or schedules never share results.
        """
        return {"class": type(self).__name__, "settings": scalar_settings(self), "fingerprint": fingerprint(self)}

    def unpack(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(data, class labels) of a training batch; an unconditional model drops the labels.

        So an ``(image, label)`` dataset such as torchvision's ``ImageFolder`` serves either kind of model.
        """
        x, y = unpack_batch(batch)
        return x, (y if self.num_classes is not None else None)

    def call_denoiser(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Calls the denoiser as ``denoiser(x, t)`` or ``denoiser(x, t, y)``; override for another signature."""
        return self.denoiser(x, t) if y is None else self.denoiser(x, t, y)

    def call_denoiser_checked(self, x: torch.Tensor, t: torch.Tensor, y: Any) -> torch.Tensor:
        """``call_denoiser``, with a clear error on the first call when the denoiser does not fit it.

        Raises:
            DenoiserCallError: the first call raised a TypeError or ValueError, or returned something
                other than a tensor with one row per input.
        """
        if getattr(self, "_denoiser_call_checked", False):
            return self.call_denoiser(x, t, y)
        call = f"{type(self.denoiser).__name__}(x_t, t{', y' if y is not None else ''})"
        fix = (
            "Subclass the adapter and override `call_denoiser(x, t, y)` to call the network that predicts the "
            "noise (or velocity) for a batch; a forward that runs a whole sampler is not that network. See the "
            "README, 'Bring your own LightningModule'."
        )
        try:
            out = self.call_denoiser(x, t, y)
        except (TypeError, ValueError) as err:
            raise DenoiserCallError(f"Calling {call} failed: {type(err).__name__}: {err}. {fix}") from err
        if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != x.shape[0]:
            got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise DenoiserCallError(f"{call} returned {got} for x_t of shape {tuple(x.shape)}. {fix}")
        self._denoiser_call_checked = True
        return out

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Training data as the denoiser saw it in training; override where the repo's ``training_step`` rescales.

        For instance a repo whose ``training_step`` maps [0, 1] images to [−1, 1] needs
        ``return 2 * x - 1`` here, or the posterior is fitted on data of the wrong scale.
        """
        return x

    def training_data(self, batch: Any) -> tuple[torch.Tensor, Any]:
        """(clean data in the model's space, conditioning) of a training batch: ``preprocess``, then ``encode``."""
        x, y = self.unpack(batch)
        x = self.preprocess(x)
        self._check_data_range(x)
        return self.check_data_shape(self.encode(x)), y

    def check_data_shape(self, x: torch.Tensor) -> torch.Tensor:
        """``x``, once checked to hold items of ``sample_shape`` (in the model's space); else a ValueError."""
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"The training data has items of shape {list(x.shape[1:])} (a batch of {list(x.shape)}), but the "
                f"model's sample_shape is {list(self.sample_shape)}: give the model data of its own shape, or set "
                "sample_shape to the data's."
            )
        return x

    def _check_data_range(self, x: torch.Tensor) -> None:
        if self.image_range is None or getattr(self, "_data_range_checked", False):
            return
        self._data_range_checked = True
        problem = data_range_problem(x, self.image_range)
        if problem is None:
            return
        warnings.warn(
            f"The training data after preprocess {problem}. If the repo's training_step rescales its data, override "
            f"{type(self).__name__}.preprocess to do the same (README: 'Bring your own LightningModule'); otherwise "
            "the posterior is fitted on data of the wrong scale.",
            stacklevel=3,
        )

    def load_weights(self, path: str | Path) -> None:
        """Loads pretrained weights from a Lightning checkpoint, a state dict or a safetensors file.

        No code stored in the file runs (see ``genunc_lightning.checkpoints``), so a Lightning
        checkpoint whose hyperparameters hold classes loads too. A Lightning checkpoint of
        ``DiffusionTrainingModule`` holds keys ``adapter.denoiser.*`` and, when trained with EMA,
        ``ema.module.*`` (preferred); a plain state dict or safetensors file holds the denoiser's own keys.
        """
        load_weights_into(
            original_module(self.denoiser), path, prefixes=("ema.module.", "ema.", "adapter.denoiser.", "denoiser.")
        )
