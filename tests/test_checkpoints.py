"""Weights from checkpoint files, never running code stored in them."""

import pickle
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


def lightning_checkpoint(path, state_dict, marker):
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
                    "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4}]}]}, path)  # fmt: skip
    finally:
        del sys.modules["src.backbone"], sys.modules["src"]


def test_a_lightning_checkpoint_with_classes_in_its_hyperparameters_loads_without_running_code(tmp_path):
    model = MLPDenoiser(hidden=16, depth=1)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    marker = tmp_path / "code-ran"
    lightning_checkpoint(tmp_path / "repo.ckpt", state, marker)
    with pytest.raises(pickle.UnpicklingError):  # what the weights-only loader does with it (the old behaviour)
        torch.load(tmp_path / "repo.ckpt", weights_only=True)
    loaded = load_state_dict(tmp_path / "repo.ckpt")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert not marker.exists()

    # Through an adapter: the denoiser's own keys under the repo's attribute name.
    adapter = GaussianDiffusionAdapter(MLPDenoiser(hidden=16, depth=1), "out", (2,))
    lightning_checkpoint(tmp_path / "denoiser.ckpt", {f"denoiser.{k}": v for k, v in model.state_dict().items()},
                         marker)  # fmt: skip
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
