"""One fingerprint for every network the package must recognise again (run manifests, caches, posteriors)."""

from __future__ import annotations

import hashlib
from enum import Enum
from pathlib import Path
from typing import Any

from torch import nn

from genunc_lightning.adapters.layers import original_module


def fingerprint(module: nn.Module, recurse: bool = True) -> str:
    """SHA-256 of a module's type, parameter and buffer names, shapes and float32 values.

    With ``recurse``, also of its structure: every submodule's name, class and ``extra_repr`` (a Tanh in
    place of a ReLU, or another stride, changes what the network computes with the same weights).

    Args:
        module: the network (a ``torch.compile`` wrapper counts as the module it wraps).
        recurse: include submodules (``False``: the module's own tensors, as for a last layer; this
            value is stored in posterior files, so it stays as it was).
    """
    module = original_module(module)
    digest = hashlib.sha256(type(module).__name__.encode())
    if recurse:
        for name, sub in module.named_modules():
            kind = type(original_module(sub))
            digest.update(f"{name}:{kind.__module__}.{kind.__qualname__}({sub.extra_repr()})".encode())
    tensors = list(module.named_parameters(recurse=recurse)) + list(module.named_buffers(recurse=recurse))
    for name, value in tensors:
        value = value.detach().cpu()
        digest.update(f"{name}{tuple(value.shape)}".encode())
        digest.update((value.float() if value.is_floating_point() else value).contiguous().numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (a shipped snapshot is named by it in results that rest on it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_entry_of(module: nn.Module | None) -> dict[str, Any]:
    """What identifies a network in run manifests and feature caches.

    Its own ``manifest_entry()`` when it has one, else its class and ``fingerprint``, so two modules of
    one class with other weights never pass for each other.
    """
    if module is None:
        return {"class": None}
    if hasattr(module, "manifest_entry"):
        return module.manifest_entry()
    return {"class": type(module).__name__, "fingerprint": fingerprint(module)}


def scalar_settings(obj: Any) -> dict[str, Any]:
    """An object's public scalar attributes (enums by value, tuples as lists): its settings in a manifest."""
    settings = {}
    for key, value in sorted(vars(obj).items()):
        if key.startswith("_") or key == "training":
            continue
        if isinstance(value, Enum):
            value = value.value
        if value is None or isinstance(value, (bool, int, float, str, tuple)):
            settings[key] = list(value) if isinstance(value, tuple) else value
    return settings
