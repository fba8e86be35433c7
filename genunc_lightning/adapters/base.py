"""The adapter contract: the one seam between a user's diffusion model and everything else.

An adapter names the denoiser whose last layer is Bayesian, computes the per-example training
residual from a batch and per-example seeds, and runs the sampler with optional last-layer
weights. Everything downstream (the Fisher pass, the posterior, scored sampling) talks to an
adapter only, never to the user's module directly.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genunc_lightning.adapters.layers import (
    LastLayerError,
    LastLayerWeights,
    batch_copies,
    original_module,
    resolve_last_layer,
    use_last_layer_weights,
)
from genunc_lightning.checkpoints import load_state_dict, load_weights_into, with_first_prefix_stripped
from genunc_lightning.data.batches import data_range_problem, unpack_batch
from genunc_lightning.fingerprints import fingerprint, scalar_settings

# Settings added in 0.5 (guidance) and 0.6 (scheduler) at the values that sample as before they existed: left
# out of a run's identity, so a run of the version before still resumes. (0.5's identities hold its respacing
# settings, timestep_respacing and timestep_offset, so those stay.)
LATER_SETTING_DEFAULTS = {
    "guidance_scale": 1.0,
    "null_class": None,
    "negative_prompt": None,
    "scheduler": None,
}


class DenoiserCallError(TypeError):
    """The denoiser cannot be called the way the adapter calls it (``call_denoiser``)."""


@dataclass(frozen=True)
class Condition:
    """What a batch of samples is conditioned on while sampling: one entry per sample.

    The predict data carries one integer per sample (a class label, or a prompt's position in the
    prompt list), so DDP, shards and resumes need nothing else; text models also get each sample's
    prompt and negative prompt. The adapter turns a ``Condition`` into its network's conditioning
    (``DiffusionAdapter.network_condition``), and with a guidance scale w ≠ 1 also into the
    unconditional branch's.

    Args:
        ids: LongTensor [B]: the class label, or the prompt's position in the prompt list.
        prompts: each sample's prompt, for text models.
        negative_prompts: each sample's negative prompt (the unconditional branch; ``None``: the empty prompt).
    """

    ids: torch.Tensor
    prompts: tuple[str, ...] | None = None
    negative_prompts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("prompts", "negative_prompts"):
            texts = getattr(self, name)
            if texts is not None:
                object.__setattr__(self, name, tuple(texts))
                if len(texts) != len(self.ids):
                    raise ValueError(f"A condition of {len(self.ids)} samples has {len(texts)} {name}.")

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str) -> Condition:
        """The same condition with its ids on ``device``."""
        return Condition(self.ids.to(device), self.prompts, self.negative_prompts)

    def repeat(self, n: int) -> Condition:
        """The condition of a batch repeated ``n`` times (one copy per weight set)."""
        prompts = self.prompts * n if self.prompts is not None else None
        negatives = self.negative_prompts * n if self.negative_prompts is not None else None
        return Condition(self.ids.repeat(n), prompts, negatives)

    def chunk(self, n: int) -> list[Condition]:
        """The condition split into ``n`` equal consecutive parts (one per weight set)."""
        size = len(self) // n
        return [self[i * size : (i + 1) * size] for i in range(n)]

    def __getitem__(self, rows: slice) -> Condition:
        prompts = self.prompts[rows] if self.prompts is not None else None
        negatives = self.negative_prompts[rows] if self.negative_prompts is not None else None
        return Condition(self.ids[rows], prompts, negatives)


def class_conditional_hint(network: nn.Module) -> str | None:
    """What makes ``network`` look class-conditional (a class embedding, a class count), or ``None``."""
    network = original_module(network)
    config = getattr(network, "config", None)
    for key in ("num_class_embeds", "class_embed_type", "num_embeds_ada_norm"):
        if config is not None and getattr(config, key, None) is not None:
            return f"config.{key} = {getattr(config, key)!r}"
    if isinstance(getattr(network, "num_classes", None), int):
        return f"num_classes = {network.num_classes}"
    for name in ("label_emb", "y_embedder", "label_embedding", "class_embedding"):
        if isinstance(getattr(network, name, None), nn.Module):
            return f"a {name} module"
    return None


def class_labels(condition: Condition | torch.Tensor) -> torch.Tensor:
    """The class labels of a sampling condition (for families that call their network themselves)."""
    return condition.ids if isinstance(condition, Condition) else condition


def _rows(conditioning: Any, index: torch.Tensor) -> Any:
    """Rows ``index`` of a network conditioning: a tensor, or a dict (or tuple) of them; ``None`` stays ``None``."""
    if conditioning is None:
        return None
    if isinstance(conditioning, torch.Tensor):
        return conditioning[index.to(conditioning.device)]
    if isinstance(conditioning, dict):
        return {k: _rows(v, index) for k, v in conditioning.items()}
    if isinstance(conditioning, (tuple, list)):
        return type(conditioning)(_rows(v, index) for v in conditioning)
    raise TypeError(f"Cannot index a conditioning of type {type(conditioning).__name__}.")


def _stack_rows(rows: list[Any]) -> Any:
    """Concatenates conditionings of one row each (tensors [1, ...], or dicts/tuples of them)."""
    first = rows[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(rows)
    if isinstance(first, dict):
        return {k: _stack_rows([r[k] for r in rows]) for k in first}
    return type(first)(_stack_rows(list(parts)) for parts in zip(*rows, strict=True))


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
        guidance_scale: classifier-free guidance w while sampling (1: off). The prediction is
            u + w·(c − u), with c the conditional and u the unconditional branch's, both computed
            with the same last-layer weights.
        null_class: the label of the unconditional branch of a class-conditional guided model (DiT and
            U-ViT: ``num_classes``, the label dropped in training).
    """

    # Whether the network is conditioned on text (the family implements ``encode_prompts``).
    takes_prompts = False
    # Whether sampling calls the network through ``call_denoiser_checked``, where guidance is applied.
    applies_guidance = True

    def __init__(
        self,
        denoiser: nn.Module,
        last_layer: str,
        sample_shape: Sequence[int],
        num_classes: int | None = None,
        image_range: tuple[float, float] | None = None,
        vae: nn.Module | None = None,
        guidance_scale: float = 1.0,
        null_class: int | None = None,
    ) -> None:
        if not isinstance(denoiser, nn.Module):
            kind = type(denoiser).__name__
            if kind.endswith("Pipeline") or hasattr(denoiser, "components"):
                raise TypeError(
                    f"A {kind} was passed where a network is expected: build the adapter with "
                    "DiffusersAdapter.from_pipeline(pipe), which takes the pipeline's network, scheduler and encoders."
                )
            raise TypeError(f"The denoiser must be a torch.nn.Module, got a {kind}.")
        super().__init__()
        self.denoiser = denoiser
        self.vae = vae
        self.last_layer = last_layer
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.num_classes = num_classes
        self.image_range = tuple(image_range) if image_range is not None else None
        self.null_class = null_class
        self.negative_prompt: str | None = None  # a text model's unconditional prompt when the data gives none
        self.guidance_scale = 1.0
        self._prompt_cache: dict[tuple[bool, str], Any] = {}
        resolve_last_layer(denoiser, last_layer)
        self.set_guidance(guidance_scale)

    def set_guidance(self, guidance_scale: float) -> None:
        """Sets the classifier-free guidance scale w (1: off), after checking the model has an unconditional branch.

        Raises:
            ValueError: w is not a finite number ≥ 0, or w ≠ 1 for a model with neither prompts nor a null class.
        """
        w = float(guidance_scale)
        if not w >= 0 or w == float("inf"):
            raise ValueError(f"guidance_scale must be a finite number >= 0 (1: no guidance), got {guidance_scale!r}.")
        if w != 1.0 and not self.applies_guidance:
            raise ValueError(
                f"{type(self).__name__} samples through its own calls of the network, where the package cannot apply "
                f"guidance: leave guidance_scale at 1 (got {w:g})."
            )
        if w != 1.0 and not self.takes_prompts:
            if self.num_classes is None:
                raise ValueError(
                    f"guidance_scale={w:g} needs an unconditional branch, but this {type(self).__name__} is "
                    "unconditional: leave guidance_scale at 1."
                )
            if self.null_class is None:
                raise ValueError(
                    f"guidance_scale={w:g} needs the unconditional branch of this class-conditional model: set "
                    f"null_class, the label it was trained with for 'no class' (DiT, U-ViT: {self.num_classes})."
                )
        self.guidance_scale = w

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
        classes: torch.Tensor | Condition | None = None,
        steps: int | None = None,
        weights: LastLayerWeights | None = None,
    ) -> torch.Tensor:
        """Samples [B, *sample_shape] in the model's space, one per seed, with ``weights`` in the last layer.

        Args:
            seeds: one seed per sample; its initial noise and sampler noise come from it alone.
            classes: class labels for conditional models, or a ``Condition`` (prompts for text models).
            steps: number of sampler steps (the adapter's default when ``None``).
            weights: last-layer weights to sample with (``None``: the pretrained ones).
        """
        condition = self.condition_of(classes, len(seeds))
        return self._sample_with_weights(seeds, condition, steps, weights)

    def condition_of(self, classes: torch.Tensor | Condition | None, batch: int) -> Condition | None:
        """The sampling ``Condition`` of class labels (or of a ``Condition``), checked against the model.

        Raises:
            ValueError: a class-conditional model without classes, a text model without prompts, or
                prompts for a model that takes none.
        """
        condition = Condition(torch.as_tensor(classes)) if isinstance(classes, torch.Tensor) else classes
        if condition is not None and len(condition) != batch:
            raise ValueError(f"{batch} seeds but a condition of {len(condition)} samples.")
        if self.takes_prompts:
            if condition is None or condition.prompts is None:
                raise ValueError(
                    f"This {type(self).__name__} is conditioned on text: give prompts (genunc_lightning.data."
                    "PromptDataModule, or Condition(ids, prompts=...))."
                )
            return condition
        if condition is not None and condition.prompts is not None:
            raise ValueError(
                f"This {type(self).__name__} takes no prompts ({'class labels' if self.num_classes else 'no condition'}"
                "): use SeedDataModule, or a text model's adapter (DiffusersAdapter.from_pipeline)."
            )
        if self.num_classes is None:
            return None
        if condition is None:
            raise ValueError(f"This model is class-conditional ({self.num_classes} classes): pass classes.")
        return condition

    def encode_prompts(self, prompts: list[str], negative: bool = False) -> Any:
        """The network's conditioning for ``prompts``: a tensor [P, ...] or a dict of them (text families).

        ``negative``: the texts are the unconditional branch's (some pipelines encode an empty negative
        prompt as zeros, SDXL for one).
        """
        raise NotImplementedError(f"{type(self).__name__} is not conditioned on text.")

    def network_condition(self, condition: Condition | None, unconditional: bool = False) -> Any:
        """What the network is called with for ``condition`` (or for its unconditional branch).

        Class labels (or the null class) for class-conditional models; for text models, the encoded
        prompts (or negative prompts: the condition's, else the adapter's ``negative_prompt``, else the
        empty prompt), each distinct text encoded once and kept.
        """
        if condition is None:
            return None
        if not self.takes_prompts:
            return torch.full_like(condition.ids, self.null_class) if unconditional else condition.ids
        default = self.negative_prompt or ""
        texts = (condition.negative_prompts or (default,) * len(condition)) if unconditional else condition.prompts
        return self.text_condition(texts, keep=True, negative=unconditional)

    def text_condition(self, texts: Sequence[str], keep: bool = False, negative: bool = False) -> Any:
        """The network's conditioning for ``texts``, each distinct text encoded once.

        Args:
            texts: one text per sample.
            keep: keep the encodings for later calls (a predict run's prompts; not a training set's captions).
            negative: the texts are the unconditional branch's (see ``encode_prompts``).
        """
        keys = [(negative, t) for t in texts]
        known = self._prompt_cache if keep else dict(self._prompt_cache)  # captions are encoded, not kept
        new = sorted({k for k in keys if k not in known})
        if new:
            encoded = self.encode_prompts([t for _, t in new], negative=negative)
            known.update({key: _rows(encoded, torch.tensor([i])) for i, key in enumerate(new)})
        return _stack_rows([known[k] for k in keys])

    def guided(self, predict: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor, y: Any) -> torch.Tensor:
        """``predict(x, t, conditioning)`` for a sampling ``Condition`` ``y``, with classifier-free guidance.

        The branches run as one forward of ``[x; x]`` with ``[unconditional; conditional]`` conditioning,
        as the pipelines do. A batch of M weight sets' chunks is then two copies of its chunk layout, and
        ``batch_copies`` tells the last layer so: both branches of a sample use its own weight set, and
        ``member_chunk`` cannot change a score. ``y`` that is not a ``Condition`` (training, or a family's
        own call) is passed on as it is.
        """
        if not isinstance(y, Condition):
            return predict(x, t, y)
        conditional = self.network_condition(y)
        if self.guidance_scale == 1.0:
            return predict(x, t, conditional)
        both = _stack_rows([self.network_condition(y, unconditional=True), conditional])
        with batch_copies(2):
            unconditional, conditional = predict(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        return unconditional + self.guidance_scale * (conditional - unconditional)

    def _sample_with_weights(
        self, seeds: torch.Tensor, classes: Condition | None, steps: int | None, weights: LastLayerWeights | None
    ) -> torch.Tensor:
        """How weight sets reach the sampler; by default one hook for the whole batch (``use_last_layer_weights``)."""
        with use_last_layer_weights(self.last_layer_module, weights):
            return self._sample(seeds, classes, steps)

    def _sample(self, seeds: torch.Tensor, classes: Condition | None, steps: int | None) -> torch.Tensor:
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
            ids = torch.zeros(1, dtype=torch.long)
            classes = Condition(ids, prompts=("",)) if self.takes_prompts else ids if self.num_classes else None
            self.sample(torch.zeros(1, dtype=torch.long), classes, steps=1)
        finally:
            handle.remove()
        if not calls:
            raise LastLayerError(
                f"The forward pass of {type(self.denoiser).__name__} never reaches {self.last_layer!r}: name the layer "
                "that produces the prediction (for diffusers UNets conv_out, for DiT proj_out_2)."
            )

    @property
    def _vae_shift(self) -> float:
        """The VAE's latent shift (SD3's has one; ``shift_factor`` is None or absent elsewhere)."""
        return getattr(self.vae.config, "shift_factor", None) or 0.0

    @torch.no_grad()
    def encode(self, data: torch.Tensor) -> torch.Tensor:
        """Training data to the model's space: latent means × scaling factor with a VAE, else itself."""
        if self.vae is None:
            return data
        return (self.vae.encode(data).latent_dist.mean - self._vae_shift) * self.vae.config.scaling_factor

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Maps samples to what people look at: images in [0, 1] for image models (VAE-decoded latents)."""
        if self.vae is not None:
            with torch.no_grad():
                x = self.vae.decode(x / self.vae.config.scaling_factor + self._vae_shift).sample
        if self.image_range is None:
            return x
        low, high = self.image_range
        return ((x - low) / (high - low)).clamp(0.0, 1.0)

    def manifest_entry(self) -> dict[str, Any]:
        """What identifies this model in a run manifest: class, scalar settings and a weight fingerprint.

        The fingerprint covers the denoiser's parameters and every buffer of the adapter (e.g. the noise
        schedule), and a diffusers scheduler is named with its config, so two runs with different weights,
        schedules or samplers never share results.
        """
        settings = scalar_settings(self)
        for key, default in LATER_SETTING_DEFAULTS.items():
            if key in settings and settings[key] == default:
                del settings[key]
        entry = {"class": type(self).__name__, "settings": settings, "fingerprint": fingerprint(self)}
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}  # not its version
            entry["scheduler"] = {
                "class": type(scheduler).__name__,
                "config": json.loads(json.dumps(config, default=str)),
            }
        return entry

    def unpack(self, batch: Any) -> tuple[torch.Tensor, Any]:
        """(data, conditioning) of a training batch; an unconditional model drops class labels.

        So an ``(image, label)`` dataset such as torchvision's ``ImageFolder`` serves either kind of model.
        A text model takes ``(image, caption)`` pairs: its conditioning is the captions, encoded by the
        model's own text encoder (``text_condition``).

        Raises:
            ValueError: a text model given no captions, or captions for a model that takes none.
        """
        x, y = unpack_batch(batch)
        captions = isinstance(y, (list, tuple)) and all(isinstance(c, str) for c in y)
        if self.takes_prompts:
            if not captions:
                got = "no conditioning" if y is None else f"{type(y).__name__} conditioning"
                raise ValueError(
                    f"{type(self).__name__} is conditioned on text, but the training batches give {got}: give "
                    "(image, caption) pairs or dicts with 'caption' (the posterior is fitted on the conditional loss)."
                )
            return x, self.text_condition(y)
        if captions:
            raise ValueError(
                f"The training batches give captions, but {type(self).__name__} takes "
                f"{'class labels' if self.num_classes is not None else 'no conditioning'}: use a text model's adapter "
                "(DiffusersAdapter.from_pipeline) or drop the captions."
            )
        return x, (y if self.num_classes is not None else None)

    def call_denoiser(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Calls the denoiser as ``denoiser(x, t)`` or ``denoiser(x, t, y)``; override for another signature."""
        return self.denoiser(x, t) if y is None else self.denoiser(x, t, y)

    def call_denoiser_checked(self, x: torch.Tensor, t: torch.Tensor, y: Any) -> torch.Tensor:
        """``call_denoiser``, with a clear error on the first call when the denoiser does not fit it.

        A sampling ``Condition`` is turned into the network's conditioning here, with guidance (``guided``).

        Raises:
            DenoiserCallError: the first call raised a TypeError or ValueError, or returned something
                other than a tensor with one row per input.
        """
        return self.guided(self._call_denoiser_once_checked, x, t, y)

    def _call_denoiser_once_checked(self, x: torch.Tensor, t: torch.Tensor, y: Any) -> torch.Tensor:
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
        except (TypeError, ValueError, AssertionError, AttributeError) as err:
            hint = class_conditional_hint(self.denoiser) if y is None else None
            if hint:
                fix = (f"The network looks class-conditional ({hint}) and was called without classes: give the adapter "
                       "num_classes= (and the predict data num_classes or classes).")  # fmt: skip
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

    def load_weights(self, path: str | Path, into: str | None = None) -> None:
        """Loads pretrained weights from a Lightning checkpoint, a state dict or a safetensors file.

        No code stored in the file runs (see ``genunc_lightning.checkpoints``), so a Lightning
        checkpoint whose hyperparameters hold classes loads too. A Lightning checkpoint of
        ``DiffusionTrainingModule`` holds keys ``adapter.denoiser.*`` and, when trained with EMA,
        ``ema.module.*`` (preferred); a plain state dict or safetensors file holds the denoiser's own keys.

        Args:
            path: the weights file.
            into: the dotted name of the denoiser's submodule the file is of (a network wrapped for the
                adapter, e.g. ``"nnet"`` for a wrapper holding U-ViT as ``self.nnet``); ``None``: the denoiser.

        Raises:
            ValueError: the file's keys do not fit; when they fit a submodule, the message names ``into=``.
        """
        denoiser = original_module(self.denoiser)
        target = denoiser.get_submodule(into) if into else denoiser
        prefixes = ("ema.module.", "ema.", "adapter.denoiser.", "denoiser.")
        try:
            load_weights_into(target, path, prefixes=prefixes)
        except ValueError as err:
            if into is None:
                fits = _submodule_the_file_fits(denoiser, path, prefixes)
                if fits:
                    raise ValueError(f"{err} The file's keys are those of the submodule {fits!r}: "
                                     f"load_weights(path, into={fits!r}).") from None  # fmt: skip
            raise


def _submodule_the_file_fits(module: nn.Module, path: str | Path, prefixes: tuple[str, ...]) -> str | None:
    """The name of a submodule whose state dict has exactly the file's keys, if one has."""
    keys = set(with_first_prefix_stripped(load_state_dict(path, type(module).__name__), prefixes))
    for name, sub in module.named_modules():
        if name and set(sub.state_dict()) == keys:
            return name
    return None
