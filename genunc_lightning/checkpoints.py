"""Reading weights from checkpoint files without running code stored in them.

``torch.load(weights_only=True)`` refuses a Lightning checkpoint whose ``hyper_parameters`` hold a
class or any other object it does not know, and ``weights_only=False`` runs whatever the pickle
says. ``load_state_dict`` needs neither: it reads the file with an unpickler that builds tensors,
storages and ordered dicts (what torch's own weights-only loader allows for them) and turns every
other object into an inert ``Opaque`` placeholder, whose construction runs nothing from the file.
Only the ``state_dict`` is used, so what the placeholders stood for is never needed. Both of torch's
formats go through it: the zip format (torch ≥ 1.6) and the legacy one, whose header pickles torch reads
with ``pickle_module.load`` rather than ``pickle_module.Unpickler``.
"""

from __future__ import annotations

import io
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn


class CheckpointError(ValueError):
    """A weights file that cannot be read as a state dict of tensors."""


class Opaque:
    """Stands for an object of a checkpoint that is not needed (hyperparameters, optimiser states, …).

    Calling, constructing and restoring state all do nothing, so unpickling one runs no code.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:  # noqa: D102
        return super().__new__(cls)

    def __call__(self, *args: Any, **kwargs: Any) -> Opaque:  # noqa: D102
        return Opaque()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        """Lists rebuilt by the pickle protocol append here; nothing is kept."""

    def extend(self, values: Any) -> None:
        """As ``append``."""

    def __repr__(self) -> str:
        return "Opaque()"


_TENSOR_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
}


class _TensorsOnlyUnpickler(pickle.Unpickler):
    """Resolves tensor, storage and dtype globals; every other global becomes ``Opaque``."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _TENSOR_GLOBALS:
            return _TENSOR_GLOBALS[(module, name)]
        if module == "torch":
            value = getattr(torch, name, None)
            if isinstance(value, torch.dtype) or (isinstance(value, type) and name.endswith("Storage")):
                return value
        return Opaque


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return _TensorsOnlyUnpickler(file, **kwargs).load()


def _restricted_loads(data: bytes, /, **kwargs: Any) -> Any:
    return _TensorsOnlyUnpickler(io.BytesIO(data), **kwargs).load()


# torch.load takes a "pickle module". Its zip reader unpickles through ``pickle_module.Unpickler``, but
# its legacy (non-zip, torch < 1.6) reader reads the magic number, protocol, system info and storage keys
# with ``pickle_module.load``: so every entry point is restricted here, and nothing else of ``pickle`` is
# offered (an attribute torch might want and this lacks fails the load, which is refused, never unsafe).
_TENSORS_ONLY_PICKLE = ModuleType("genunc_lightning.checkpoints.tensors_only_pickle")
_TENSORS_ONLY_PICKLE.__dict__.update(
    Unpickler=_TensorsOnlyUnpickler,
    load=_restricted_load,
    loads=_restricted_loads,
    UnpicklingError=pickle.UnpicklingError,
    PickleError=pickle.PickleError,
    HIGHEST_PROTOCOL=pickle.HIGHEST_PROTOCOL,
    DEFAULT_PROTOCOL=pickle.DEFAULT_PROTOCOL,
)


def load_state_dict(path: str | os.PathLike, what: str = "the model") -> dict[str, torch.Tensor]:
    """The state dict of a safetensors file, a torch state dict, or a Lightning checkpoint.

    Never executes code stored in the file: objects other than tensors (a Lightning checkpoint's
    hyperparameters that hold classes, say) are read as inert placeholders and dropped.

    Args:
        path: the file.
        what: what the weights are for, named in errors.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file holds no state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No weights file at {path}: pass the path of the weights for {what}.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error types for damaged files
            raise CheckpointError(f"{path} is not a readable safetensors file for {what} ({err}).") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # objects the weights-only loader refuses: read them as placeholders
        try:
            state = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_TENSORS_ONLY_PICKLE)
        except Exception as err:
            raise CheckpointError(f"{path} cannot be read as a checkpoint for {what} ({err}).") from err
    except Exception as err:
        raise CheckpointError(f"{path} cannot be read as a checkpoint for {what} ({err}).") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    if not tensors or len(tensors) != len(state):
        raise CheckpointError(
            f"{path} holds no state dict of tensors for {what}: save the model's state_dict() with torch.save or "
            "safetensors, or pass a Lightning checkpoint."
        )
    return tensors


def with_first_prefix_stripped(state: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
    """The keys under the first of ``prefixes`` that some key starts with, stripped of it (else all keys)."""
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_weights_into(module: nn.Module, path: str | os.PathLike, prefixes: tuple[str, ...] = ()) -> None:
    """Loads a weights file into ``module``, all keys required.

    Args:
        module: the network.
        path: a safetensors file, a state dict or a Lightning checkpoint (read by ``load_state_dict``).
        prefixes: the first prefix that some key starts with selects those keys, stripped of it
            (``ema.`` before ``adapter.denoiser.``: the EMA weights of a training checkpoint win).

    Raises:
        ValueError: the file's keys do not fit ``module``.
    """
    state = with_first_prefix_stripped(load_state_dict(path, type(module).__name__), prefixes)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"Checkpoint {path} does not fit {type(module).__name__}: missing keys {missing[:5]}, unexpected keys "
            f"{unexpected[:5]}."
        )
