"""Checkpoints shipped with the package (genunc_lightning/assets), and their export from training runs."""

from __future__ import annotations

import shutil
from pathlib import Path

from genunc_lightning.checkpoints import load_state_dict
from genunc_lightning.io import atomic_path

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets"


def asset_path(name: str) -> Path:
    """Path of a shipped asset, e.g. ``digits_unet.safetensors``; a clear error when it is absent."""
    path = ASSET_DIR / name
    if not path.is_file():
        available = sorted(p.name for p in ASSET_DIR.glob("*.safetensors"))
        raise FileNotFoundError(f"No shipped asset {name!r} in {ASSET_DIR}; available: {available}. `make assets`.")
    return path


def export_weights(checkpoint: str | Path, output: str | Path, prefix: str) -> Path:
    """Saves the weights under ``prefix`` of a Lightning checkpoint as a safetensors state dict.

    Args:
        checkpoint: the ``.ckpt`` written by `genunc fit`.
        output: the safetensors file to write (atomically).
        prefix: ``ema.module.`` or ``adapter.denoiser.`` for diffusion models, ``net.`` for classifiers.
    """
    from safetensors.torch import save_file

    state = load_state_dict(checkpoint, "the shipped assets")
    weights = {k[len(prefix) :]: v.contiguous() for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"{checkpoint} holds no weights under {prefix!r}.")
    with atomic_path(output) as tmp:
        save_file(weights, str(tmp))
    return Path(output)


# (checkpoint written by the configs, prefix of the weights in it, shipped file)
SHIPPED = [
    ("runs/digits/classifier_scorer.ckpt", "net.", "digits_scorer_cnn.safetensors"),
    ("runs/digits/classifier_evaluator.ckpt", "net.", "digits_evaluator_mlp.safetensors"),
    *[(f"runs/toy/member{i}.ckpt", "ema.module.", f"toy_mlp_{i}.safetensors") for i in range(5)],
]


# The digits UNet after each sweep length: configs/digits/fit.yaml's WeightSnapshots writes them ready to ship.
SNAPSHOTS = [f"runs/digits/digits_unet_s{s}.safetensors" for s in (150, 300, 600, 1500, 6000)]


def main() -> None:
    """Exports every shipped asset from the checkpoints and snapshots that `make assets` trains."""
    for checkpoint, prefix, name in SHIPPED:
        path = export_weights(checkpoint, ASSET_DIR / name, prefix)
        print(f"{checkpoint} -> {path} ({path.stat().st_size / 1e6:.2f} MB)")
    for snapshot in SNAPSHOTS:
        path = ASSET_DIR / Path(snapshot).name
        with atomic_path(path) as tmp:
            shutil.copyfile(snapshot, tmp)
        print(f"{snapshot} -> {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
