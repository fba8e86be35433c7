"""Diagonal empirical Fisher of the per-example diffusion loss w.r.t. the last layer (pure functions).

The backbone never builds an autograd graph: every parameter is frozen during the pass, and a
forward hook turns the last layer's output into a fresh leaf that requires grad. Autograd then
records only what follows the last layer (e.g. dropping learned-variance channels, subtracting the
target). From the gradient δ of the summed loss w.r.t. that output and the layer's captured input,
one vectorised VJP of the layer alone gives every example's gradient. The cost is one forward pass
plus a backward pass through the last layer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from genunc_lightning.adapters.base import DiffusionAdapter
from genunc_lightning.adapters.layers import LastLayerError, apply_layer, layer_parameters, resolve_last_layer


@dataclass
class FisherBatch:
    """What one batch contributes to the Fisher pass.

    Attributes:
        diag: per parameter name, Σ_examples mean_draws g², float64, shaped like the parameter.
        squared_residual_sum: Σ of squared residuals over examples, draws and dimensions (float64).
        num_residuals: how many residual entries that sum covers.
        num_examples: examples in the batch.
        losses: per-example, per-draw losses ½‖r‖², shape [draws, B].
    """

    diag: dict[str, torch.Tensor]
    squared_residual_sum: torch.Tensor
    num_residuals: int
    num_examples: int
    losses: torch.Tensor


@contextmanager
def capture_last_layer(model: nn.Module, layer: nn.Module) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Freezes ``model`` and records (input, output leaf) for every call of ``layer`` in the block.

    The requires_grad flags of the model's parameters are restored on exit.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().requires_grad_(True)
        calls.append((inputs[0].detach(), leaf))
        return leaf

    for p, _ in flags:
        p.requires_grad_(False)
    handle = layer.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)


UNFOLD_BYTES = 1 << 30  # memory budget of one unfolded chunk in the Conv2d path


def per_example_gradients(
    layer: nn.Module, inputs: torch.Tensor, output_grads: torch.Tensor, method: str = "auto"
) -> dict[str, torch.Tensor]:
    """Per-example gradients of the layer's parameters from its input and its output's gradient.

    Args:
        layer: a supported last layer.
        inputs: the layer's input for a batch, [B, ...].
        output_grads: gradient of the summed per-example losses w.r.t. the layer's output.
        method: ``vmap`` (a vectorised VJP of the layer, any supported type), ``unfold`` (Conv2d
            only: im2col and one batched matrix product, in chunks of at most ``UNFOLD_BYTES``), or
            ``auto`` (``unfold`` for Conv2d, else ``vmap``).

    Returns:
        Per parameter name, a tensor [B, *parameter.shape].
    """
    if method == "unfold" or (method == "auto" and isinstance(layer, nn.Conv2d)):
        return _conv2d_unfold_gradients(layer, inputs, output_grads)
    params = {n: p.detach() for n, p in layer_parameters(layer).items()}

    def one(x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
        _, vjp = torch.func.vjp(lambda p: apply_layer(layer, x.unsqueeze(0), p), params)
        return vjp(g.unsqueeze(0))[0]

    return torch.func.vmap(one)(inputs, output_grads)


def _conv2d_unfold_gradients(layer: nn.Conv2d, inputs: torch.Tensor, output_grads: torch.Tensor) -> dict:
    if not isinstance(layer, nn.Conv2d) or layer.padding_mode != "zeros":
        raise ValueError("The unfold path supports nn.Conv2d with zero padding only; use method='vmap'.")
    b, groups = inputs.shape[0], layer.groups
    k = layer.kernel_size[0] * layer.kernel_size[1]
    per_example = inputs[0].numel() * k * inputs.element_size()  # unfolded bytes of one example (stride 1)
    step = max(1, UNFOLD_BYTES // max(1, per_example))
    weights = []
    for start in range(0, b, step):
        cols = torch.nn.functional.unfold(
            inputs[start : start + step], layer.kernel_size, layer.dilation, layer.padding, layer.stride
        )  # [b, C_in·k, L]
        grads = output_grads[start : start + step].flatten(2)  # [b, C_out, L]
        n = cols.shape[0]
        cols = cols.view(n, groups, -1, cols.shape[-1])
        grads = grads.view(n, groups, -1, grads.shape[-1])
        weights.append(torch.einsum("bgol,bgil->bgoi", grads, cols).reshape(n, *layer.weight.shape))
    out = {"weight": torch.cat(weights)}
    if layer.bias is not None:
        out["bias"] = output_grads.flatten(2).sum(-1)
    return out


def fisher_batch(
    adapter: DiffusionAdapter, batch: Any, seeds: Sequence[torch.Tensor], per_example_method: str = "auto"
) -> FisherBatch:
    """Diagonal empirical Fisher contribution of one batch, averaged over (t, ε) draws.

    Args:
        adapter: the model.
        batch: a training batch in the adapter's format.
        seeds: one LongTensor of per-example seeds per draw (``len(seeds)`` draws).
        per_example_method: see ``per_example_gradients``.

    Returns:
        The batch's ``FisherBatch``. With K draws, each example contributes (1/K) Σ_k g_k², so the
        Fisher's scale does not depend on K.

    Raises:
        LastLayerError: the forward pass never reaches the last layer, or the loss does not
            depend on its output.
    """
    layer = resolve_last_layer(adapter.denoiser, adapter.last_layer)
    names = list(layer_parameters(layer))
    diag: dict[str, torch.Tensor] | None = None
    sq_sum = torch.zeros((), dtype=torch.float64)
    num_residuals = 0
    losses = []
    for draw_seeds in seeds:
        with torch.enable_grad(), capture_last_layer(adapter.denoiser, layer) as calls:
            residual = adapter.residual(batch, draw_seeds)
            if not calls:
                raise LastLayerError(
                    f"The forward pass never reached the last layer {adapter.last_layer!r}: name a layer "
                    "that the denoiser's forward calls."
                )
            loss = 0.5 * residual.flatten(1).pow(2).sum(1)
            if not loss.requires_grad:
                raise LastLayerError(
                    f"The loss does not depend on the output of {adapter.last_layer!r}: name the layer "
                    "that produces the prediction."
                )
            grads = torch.autograd.grad(loss.sum(), [leaf for _, leaf in calls], allow_unused=True)
        per_example: dict[str, torch.Tensor] = {}
        for (inputs, _), g in zip(calls, grads, strict=True):
            if g is None:
                continue
            for n, v in per_example_gradients(layer, inputs, g, per_example_method).items():
                per_example[n] = per_example[n] + v if n in per_example else v
        contribution = {n: per_example[n].double().pow(2).sum(0) / len(seeds) for n in names}
        diag = contribution if diag is None else {n: diag[n] + contribution[n] for n in names}
        residual = residual.detach()
        sq_sum = sq_sum + residual.double().pow(2).sum().cpu()
        num_residuals += residual.numel()
        losses.append(loss.detach())
    assert diag is not None, "fisher_batch needs at least one draw"
    return FisherBatch(diag, sq_sum, num_residuals, int(losses[0].shape[0]), torch.stack(losses))
