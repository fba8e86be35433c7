"""Last-layer surgery: find the Bayesian layer, run it with other weights, hold M weight sets.

Nothing here edits a user's model: other weights reach the layer through forward hooks, and the
functional ops run the layer's own computation with them.
"""

from __future__ import annotations

import contextvars
import difflib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_LAST_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

LastLayerWeights = Mapping[str, torch.Tensor]

# How many copies of the member-chunk layout a batch reaching the last layer holds (see ``batch_copies``).
_BATCH_COPIES: contextvars.ContextVar[int] = contextvars.ContextVar("batch_copies", default=1)


@contextmanager
def batch_copies(copies: int) -> Iterator[None]:
    """Within the block, a batch is ``copies`` consecutive copies of the usual M-chunk layout.

    Classifier-free guidance runs the unconditional and the conditional branch as one forward of
    ``[x; x]``: with M weight sets, that batch is M chunks, then the same M chunks again, and chunk
    ``i`` belongs to weight set ``i mod M`` (``apply_layer_members``), so both branches of a sample use
    its own set.
    """
    token = _BATCH_COPIES.set(int(copies))
    try:
        yield
    finally:
        _BATCH_COPIES.reset(token)


class LastLayerError(ValueError):
    """The named last layer is missing, has no parameters, or is of an unsupported type."""


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

    Inside ``batch_copies(c)`` the batch is c copies of that layout (c·M chunks, chunk i with set i mod M).

    Args:
        layer: a supported last layer.
        x: its input, batch dimension M·B with member m's examples at [m·B, (m+1)·B).
        params: weight sets stacked on a leading member dimension M.
    """
    members = next(iter(params.values())).shape[0]
    parts = members * _BATCH_COPIES.get()
    if x.shape[0] % parts:
        raise ValueError(f"A batch of {x.shape[0]} cannot be split into {parts} equal member chunks.")
    chunks = x.chunk(parts)
    return torch.cat(
        [apply_layer(layer, c, {k: v[i % members] for k, v in params.items()}) for i, c in enumerate(chunks)]
    )


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


class LastLayerMembers(nn.Module):
    """K weight sets of a last layer as buffers, applied by one forward hook while attached.

    ``use_last_layer_weights`` registers a new hook on every call, which a compiled denoiser sees as a
    new graph each time. Here one hook is attached for a whole run; which weight sets apply is a
    Python attribute set by ``active``, so a compiled denoiser builds one graph per selection and then
    reuses it. The weights are buffers, so Lightning moves them with the module that owns this one.

    Args:
        weights: per parameter name, K stacked weight sets [K, *parameter.shape].
    """

    def __init__(self, weights: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.names = sorted(weights)
        for name in self.names:
            self.register_buffer(f"stacked_{name}", weights[name].detach().clone())
        self.selection: tuple[int, int] | None = None
        self._handle: Any = None
        self._layer: nn.Module | None = None

    @property
    def num_sets(self) -> int:
        """K, the weight sets held."""
        return getattr(self, f"stacked_{self.names[0]}").shape[0]

    def weight_sets(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        """Sets ``start`` … ``stop − 1``, stacked, by parameter name."""
        return {n: getattr(self, f"stacked_{n}")[start:stop] for n in self.names}

    def attach(self, layer: nn.Module) -> None:
        """Installs the hook on ``layer`` (once; a no-op when already attached to it)."""
        if self._layer is layer:
            return
        self.detach()
        own = layer_parameters(layer)
        if set(self.names) != set(own):
            raise ValueError(f"Weight sets have parameters {self.names}, the layer has {sorted(own)}.")
        self._handle, self._layer = layer.register_forward_hook(self._hook), layer

    def detach(self) -> None:
        """Removes the hook: the layer is as it was."""
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._layer = None, None

    def _hook(self, module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
        if self.selection is None:
            return None
        own = layer_parameters(module)  # as use_last_layer_weights: the layer's own device and dtype
        weights = {
            n: w.to(device=own[n].device, dtype=own[n].dtype) for n, w in self.weight_sets(*self.selection).items()
        }
        return apply_layer_members(module, inputs[0], weights)

    @contextmanager
    def active(self, start: int, stop: int) -> Iterator[None]:
        """Within the block, the layer's calls use sets ``start … stop − 1`` (a batch of stop − start chunks)."""
        if self._layer is None:
            raise RuntimeError("LastLayerMembers.active needs attach(layer) first.")
        if not 0 <= start < stop <= self.num_sets:
            raise ValueError(f"Weight sets {start}:{stop} are outside 0:{self.num_sets}.")
        self.selection = (start, stop)
        try:
            yield
        finally:
            self.selection = None
