"""The adapter contract: the one seam between a user's diffusion model and everything else.

An adapter names the denoiser whose last layer is Bayesian, computes the per-example training
residual from a batch and per-example seeds, and runs the sampler with optional last-layer
weights. Everything downstream (the Fisher pass, the posterior, scored sampling) talks to an
adapter only, never to the user's module directly.
"""

from __future__ import annotations

import difflib
import hashlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_LAST_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

LastLayerWeights = Mapping[str, torch.Tensor]


class LastLayerError(ValueError):
    """The named last layer is missing, has no parameters, or is of an unsupported type."""


class DenoiserCallError(TypeError):
    """The denoiser cannot be called the way the adapter calls it (``call_denoiser``)."""


def original_module(model: nn.Module) -> nn.Module:
    """The module itself, under a ``torch.compile(model)`` wrapper (``OptimizedModule``) if there is one.

    Layer names, weights and checkpoints are those of the original module, however it is called.
    ``model.compile()`` compiles in place and needs no unwrapping.
    """
    return getattr(model, "_orig_mod", model)


def resolve_last_layer(model: nn.Module, name: str) -> nn.Module:
    """Returns the submodule ``name`` of ``model`` after checking it can carry a posterior.

    Args:
        model: the denoiser.
        name: dotted module name, as in ``model.named_modules()``.

    Raises:
        LastLayerError: the name is unknown (the closest names are suggested), the module has no
            parameters, or its type is not one of ``SUPPORTED_LAST_LAYER_TYPES``.
    """
    model = original_module(model)
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        candidates = [n for n, m in modules.items() if n and any(True for _ in m.parameters(recurse=False))]
        close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.3)
        hint = f" Closest names: {', '.join(close)}." if close else ""
        raise LastLayerError(
            f"{type(model).__name__} has no submodule named {name!r}.{hint} "
            "Pass the dotted name of the layer as listed by model.named_modules()."
        )
    layer = modules[name]
    if not any(True for _ in layer.parameters(recurse=False)):
        raise LastLayerError(
            f"The last layer {name!r} ({type(layer).__name__}) has no parameters of its own. "
            f"Name the parameterised layer itself, one of: {_supported_names()}."
        )
    if not isinstance(layer, SUPPORTED_LAST_LAYER_TYPES):
        raise LastLayerError(
            f"The last layer {name!r} is a {type(layer).__name__}, which is not supported. "
            f"Supported types: {_supported_names()}."
        )
    return layer


def _supported_names() -> str:
    return ", ".join(f"nn.{t.__name__}" for t in SUPPORTED_LAST_LAYER_TYPES)


def require_interface(obj: Any, attributes: Sequence[str], needed_by: str, kind: str) -> None:
    """Raises a TypeError naming the first missing attribute of a foreign model's interface."""
    for attr in attributes:
        if not hasattr(obj, attr):
            raise TypeError(f"{type(obj).__name__} has no {attr!r}: {needed_by} needs {kind}.")


def layer_parameters(layer: nn.Module) -> dict[str, torch.Tensor]:
    """The layer's own parameters by short name (``weight`` and, if present, ``bias``)."""
    return {n: p for n, p in layer.named_parameters(recurse=False)}


def apply_layer(layer: nn.Module, x: torch.Tensor, params: LastLayerWeights) -> torch.Tensor:
    """Runs a supported last layer on ``x`` with the given parameters instead of its own.

    Calls the functional op directly, so no module hooks fire.
    """
    weight, bias = params["weight"], params.get("bias")
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return layer._conv_forward(x, weight, bias)
    raise LastLayerError(f"Unsupported last layer type {type(layer).__name__}: {_supported_names()}.")


def apply_layer_members(layer: nn.Module, x: torch.Tensor, params: LastLayerWeights) -> torch.Tensor:
    """Runs the layer with M weight sets on a batch made of M equal chunks, chunk m with set m.

    Each chunk goes through the same op, at the same shape, as an ordinary forward of B examples, so
    a member whose weights equal the layer's own gives bit-identical outputs.

    Args:
        layer: a supported last layer.
        x: its input, batch dimension M·B with member m's examples at [m·B, (m+1)·B).
        params: weight sets stacked on a leading member dimension M.
    """
    members = next(iter(params.values())).shape[0]
    if x.shape[0] % members:
        raise ValueError(f"A batch of {x.shape[0]} cannot be split into {members} equal member chunks.")
    chunks = x.chunk(members)
    return torch.cat([apply_layer(layer, c, {k: v[m] for k, v in params.items()}) for m, c in enumerate(chunks)])


@contextmanager
def use_last_layer_weights(layer: nn.Module, weights: LastLayerWeights | None) -> Iterator[None]:
    """Runs ``layer`` with ``weights`` inside the block, without copying or editing the model.

    ``weights`` holds tensors shaped like the layer's parameters (one weight set) or with one
    extra leading dimension M (M weight sets; the batch reaching the layer is then M equal chunks,
    see ``apply_layer_members``). ``None`` leaves the layer as it is.
    """
    if weights is None:
        yield
        return
    own = layer_parameters(layer)
    if set(weights) != set(own):
        raise ValueError(f"Weight set has parameters {sorted(weights)}, the layer has {sorted(own)}.")
    stacked = {n: weights[n].dim() == own[n].dim() + 1 for n in own}
    if len(set(stacked.values())) != 1:
        raise ValueError("Either every parameter of the weight set has a member dimension or none does.")
    members = next(iter(stacked.values()))
    for n, p in own.items():
        shape = tuple(weights[n].shape[1:] if members else weights[n].shape)
        if shape != tuple(p.shape):
            raise ValueError(f"Weight {n!r} has shape {shape}, the layer's has {tuple(p.shape)}.")
    cast = {n: w.to(device=own[n].device, dtype=own[n].dtype) for n, w in weights.items()}

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        if members:
            return apply_layer_members(module, inputs[0], cast)
        return apply_layer(module, inputs[0], cast)

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (names, shapes, float32 values)."""
    digest = hashlib.sha256()
    module = original_module(module)
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for name, value in tensors:
        value = value.detach().cpu()
        digest.update(f"{name}{tuple(value.shape)}".encode())
        digest.update((value.float() if value.is_floating_point() else value).contiguous().numpy().tobytes())
    return digest.hexdigest()


def module_identity(module: nn.Module | None) -> dict[str, Any]:
    """What identifies a network in run manifests and feature caches.

    Its own ``identity()`` when it has one, else its class and a fingerprint of its weights, so two
    modules of one class with other weights never pass for each other.
    """
    if module is None:
        return {"class": None}
    if hasattr(module, "identity"):
        return module.identity()
    return {"class": type(module).__name__, "fingerprint": module_fingerprint(module)}


def unpack_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Splits a training batch into (data, class labels or None).

    Accepts a tensor, an ``(x, y)`` or ``(x,)`` sequence, or a mapping with ``x``/``image``/``images``
    and optionally ``y``/``label``/``labels``/``class_labels``.
    """
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        x = next((batch[k] for k in ("x", "image", "images", "sample") if k in batch), None)
        if x is None:
            raise KeyError(f"Batch mapping has keys {sorted(batch)}; expected one of x, image, images, sample.")
        y = next((batch[k] for k in ("y", "label", "labels", "class_labels") if k in batch), None)
        return x, y
    if isinstance(batch, Sequence) and len(batch) in (1, 2):
        return batch[0], (batch[1] if len(batch) == 2 else None)
    raise TypeError(f"Cannot read a batch of type {type(batch).__name__}: pass a tensor, (x, y) or a dict.")


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
        """Per-example loss ½‖prediction − target‖², summed over dimensions: shape [B].

        This is the Gaussian negative log-likelihood with unit variance (up to a constant), the
        loss whose empirical Fisher the posterior uses.
        """
        return 0.5 * self.residual(batch, seeds).flatten(1).pow(2).sum(1)

    @torch.no_grad()
    def sample(
        self,
        seeds: torch.Tensor,
        classes: torch.Tensor | None = None,
        steps: int | None = None,
        weights: LastLayerWeights | None = None,
    ) -> torch.Tensor:
        """Generates one sample per seed.

        Args:
            seeds: one seed per sample; its initial noise and sampler noise come from it alone.
            classes: class labels for conditional models.
            steps: number of sampler steps (the adapter's default when ``None``).
            weights: last-layer weights to sample with (``None``: the pretrained ones).

        Returns:
            Samples in the model's space, shape [B, *sample_shape].
        """
        if self.num_classes is not None and classes is None:
            raise ValueError(f"This model is class-conditional ({self.num_classes} classes): pass classes.")
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

    def identity(self) -> dict[str, Any]:
        """What identifies this model in a run manifest: class, scalar settings and a weight fingerprint.

        The fingerprint covers the denoiser's parameters and every buffer of the adapter (e.g. the noise
        schedule), so two runs with different weights or schedules never share results.
        """
        settings = {}
        for key, value in sorted(vars(self).items()):
            if key.startswith("_") or key == "training":
                continue
            if isinstance(value, Enum):
                value = value.value
            if value is None or isinstance(value, (bool, int, float, str, tuple)):
                settings[key] = list(value) if isinstance(value, tuple) else value
        return {"class": type(self).__name__, "settings": settings, "fingerprint": module_fingerprint(self)}

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
        return self.encode(x), y

    def _check_data_range(self, x: torch.Tensor) -> None:
        if self.image_range is None or getattr(self, "_data_range_checked", False):
            return
        self._data_range_checked = True
        low, high = self.image_range
        lo, hi = float(x.min()), float(x.max())
        margin = 0.05 * (high - low)
        if lo < low - margin or hi > high + margin:
            problem = f"lie in [{lo:.3g}, {hi:.3g}], outside image_range {self.image_range}"
        elif low < 0 <= lo and hi <= 1 and hi - lo > 0:
            problem = f"lie in [{lo:.3g}, {hi:.3g}], which looks like [0, 1] data for image_range {self.image_range}"
        else:
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
        ``ema.*`` (preferred); a plain state dict or safetensors file holds the denoiser's own keys.
        """
        from genunc_lightning.checkpoints import load_state_dict

        state = load_state_dict(path, type(self.denoiser).__name__)
        for prefix in ("ema.", "adapter.denoiser.", "denoiser."):
            if any(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                break
        missing, unexpected = original_module(self.denoiser).load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"Checkpoint {path} does not fit {type(self.denoiser).__name__}: "
                f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}."
            )
