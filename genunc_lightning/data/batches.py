"""Training batches in the shapes users' datasets yield them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def unpack_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Splits a training batch into (data, class labels or None).

    Accepts a tensor, an ``(x, y)`` or ``(x,)`` sequence, or a mapping with ``x``/``image``/``images``
    and optionally ``y``/``label``/``labels``/``class_labels`` (or, for text models,
    ``caption``/``captions``/``text``/``prompt``).
    """
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        x = next((batch[k] for k in ("x", "image", "images", "sample") if k in batch), None)
        if x is None:
            raise KeyError(f"Batch mapping has keys {sorted(batch)}; expected one of x, image, images, sample.")
        y = next((batch[k] for k in ("y", "label", "labels", "class_labels", "caption", "captions", "text", "prompt")
                  if k in batch), None)  # fmt: skip
        return x, y
    if isinstance(batch, Sequence) and len(batch) in (1, 2):
        return batch[0], (batch[1] if len(batch) == 2 else None)
    raise TypeError(f"Cannot read a batch of type {type(batch).__name__}: pass a tensor, (x, y) or a dict.")


def data_range_problem(x: torch.Tensor, image_range: tuple[float, float]) -> str | None:
    """What is wrong with training data for a model of ``image_range``, or ``None`` when they fit.

    Data outside the range (by more than 5% of its width), or in [0, 1] for a range that reaches below
    0 (the usual sign of a repository that rescales inside its ``training_step``), are reported.
    """
    low, high = image_range
    lo, hi = float(x.min()), float(x.max())
    margin = 0.05 * (high - low)
    if lo < low - margin or hi > high + margin:
        return f"lie in [{lo:.3g}, {hi:.3g}], outside image_range {tuple(image_range)}"
    if low < 0 <= lo and hi <= 1 and hi - lo > 0:
        return f"lie in [{lo:.3g}, {hi:.3g}], which looks like [0, 1] data for image_range {tuple(image_range)}"
    return None
