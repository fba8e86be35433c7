"""Weights from checkpoint files, never running code stored in them."""

import io
import pickle
import pickletools
import sys
import types
from pathlib import Path

import pytest
import torch

from genunc_lightning.adapters import GaussianDiffusionAdapter
from genunc_lightning.checkpoints import CheckpointError, load_state_dict
from genunc_lightning.models import MLPDenoiser


class TouchOnLoad:
    """Unpickling this runs code: it creates a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def lightning_checkpoint(path, state_dict, marker, zip_format=True):
    """A checkpoint as Lightning writes it for a module whose hyperparameters hold a class of the user's repo."""
    repo = types.ModuleType("src.backbone")  # the user's package, which genunc cannot import

    class Backbone(torch.nn.Module):
        pass

    Backbone.__module__, Backbone.__qualname__ = "src.backbone", "Backbone"
    repo.Backbone = Backbone
    package = types.ModuleType("src")
    package.backbone = repo
    sys.modules.update({"src": package, "src.backbone": repo})
    try:
        torch.save({"epoch": 3, "state_dict": state_dict, "pytorch-lightning_version": "2.6.6",
                    "hyper_parameters": {"backbone": Backbone, "lr": 1e-4, "callback": TouchOnLoad(marker)},
                    "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4}]}]}, path,
                   _use_new_zipfile_serialization=zip_format)  # fmt: skip
    finally:
        del sys.modules["src.backbone"], sys.modules["src"]


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_lightning_checkpoint_with_classes_in_its_hyperparameters_loads_without_running_code(tmp_path, zip_format):
    model = MLPDenoiser(hidden=16, depth=1)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    marker = tmp_path / "code-ran"
    lightning_checkpoint(tmp_path / "repo.ckpt", state, marker, zip_format)
    with pytest.raises(pickle.UnpicklingError):  # what the weights-only loader does with it (the old behaviour)
        torch.load(tmp_path / "repo.ckpt", weights_only=True)
    loaded = load_state_dict(tmp_path / "repo.ckpt")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert not marker.exists()

    # Through an adapter: the denoiser's own keys under the repo's attribute name.
    adapter = GaussianDiffusionAdapter(MLPDenoiser(hidden=16, depth=1), "out", (2,))
    lightning_checkpoint(tmp_path / "denoiser.ckpt", {f"denoiser.{k}": v for k, v in model.state_dict().items()},
                         marker, zip_format)  # fmt: skip
    adapter.load_weights(tmp_path / "denoiser.ckpt")
    assert torch.equal(adapter.denoiser.out.weight, model.out.weight) and not marker.exists()


def test_code_in_place_of_weights_is_refused_without_running(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {"w": torch.zeros(2), "evil": TouchOnLoad(marker)}}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="holds no state dict of tensors"):
        load_state_dict(tmp_path / "evil.ckpt")
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match="No weights file"):
        load_state_dict(tmp_path / "missing.ckpt")


# torch's legacy (non-zip) format is five pickles in a row: magic number, protocol, system info, the
# object, the storage keys; then the raw storages. Its reader loads all but the object with
# ``pickle_module.load``, so a restricted ``Unpickler`` alone left four places for code.
LEGACY_PICKLES = {"magic number": 0, "protocol": 1, "system info": 2, "storage keys": 4}


def legacy_pickles(raw):
    """The byte ranges of the five pickles of a legacy-format file, found without unpickling."""
    f, bounds = io.BytesIO(raw), []
    for _ in range(5):
        start = f.tell()
        for _op in pickletools.genops(f):
            pass
        bounds.append((start, f.tell()))
    return bounds


def with_code_in_pickle(raw, which, marker):
    """``raw`` with pickle ``which`` replaced by one that first runs code, then yields the original value."""
    start, end = legacy_pickles(raw)[which]
    value = pickle.Unpickler(io.BytesIO(raw[start:end])).load() if which != 3 else None
    # ``TouchOnLoad``'s reduce, its result dropped (POP), then the original value: a correct file otherwise.
    hostile = pickle.dumps(TouchOnLoad(marker), protocol=2)[:-1] + pickle.POP + pickle.dumps(value, protocol=2)[2:]
    return raw[:start] + hostile + raw[end:]


@pytest.mark.parametrize("where", LEGACY_PICKLES)
def test_an_old_format_checkpoint_runs_no_code_from_any_of_its_pickles(tmp_path, where):
    model = MLPDenoiser(hidden=16, depth=1)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf, _use_new_zipfile_serialization=False)
    marker = tmp_path / "code-ran"
    path = tmp_path / "old.pt"
    path.write_bytes(with_code_in_pickle(buf.getvalue(), LEGACY_PICKLES[where], marker))
    # Control: the file is a correct checkpoint that runs its code under torch's unrestricted loader.
    loaded = torch.load(path, weights_only=False)
    assert marker.exists() and all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    marker.unlink()

    state = load_state_dict(path)  # the header pickles hold plain values: the file loads, and runs nothing
    assert not marker.exists()
    assert state.keys() == model.state_dict().keys() and all(torch.equal(state[k], v) for k, v in
                                                             model.state_dict().items())  # fmt: skip
    adapter = GaussianDiffusionAdapter(MLPDenoiser(hidden=16, depth=1), "out", (2,))
    adapter.load_weights(path)
    assert torch.equal(adapter.denoiser.out.weight, model.out.weight) and not marker.exists()


def test_an_old_format_file_of_code_alone_is_refused_without_running(tmp_path):
    marker = tmp_path / "code-ran"
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(TouchOnLoad(marker), protocol=2))
    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint"):
        load_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()
