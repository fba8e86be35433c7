"""The embedded default: shipped checkpoints, the configs that re-create them, the notebook."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genunc_lightning.cli import CONFIG_DIR
from genunc_lightning.experiments.assets import SHIPPED, asset_path

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_checkpoints_are_small_and_load():
    from genunc_lightning.experiments.digits import DigitsFeatureEncoder

    files = [asset_path(name) for _, _, name in SHIPPED]
    assert sum(f.stat().st_size for f in files) <= 5 * 1024 * 1024
    for arch in ("cnn", "mlp"):
        assert DigitsFeatureEncoder(arch)(torch.rand(3, 1, 8, 8)).shape[0] == 3
    with pytest.raises(FileNotFoundError, match="make assets"):
        asset_path("missing.safetensors")


def genunc(*args, cwd):
    return subprocess.run([sys.executable, "-m", "genunc_lightning.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


@pytest.mark.parametrize(
    "configs",
    [
        ["digits/classifier_scorer.yaml"],
        ["digits/classifier_evaluator.yaml"],
        ["digits/model.yaml", "digits/fit.yaml"],
    ],
)
@pytest.mark.slow
def test_configs_that_recreate_the_shipped_checkpoints_train(configs, tmp_path):
    args = [a for c in configs for a in ("--config", str(CONFIG_DIR / c))]
    overrides = ["--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false",
                 "--trainer.default_root_dir", str(tmp_path), "--trainer.callbacks.dirpath", str(tmp_path)]  # fmt: skip
    res = genunc("fit", *args, *overrides, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list(tmp_path.glob("*.ckpt"))) == 1


@pytest.mark.parametrize(
    ("command", "configs"),
    [
        ("fit_laplace", ["digits/model.yaml", "digits/fit_laplace.yaml"]),
        ("predict", ["digits/model.yaml", "digits/predict.yaml"]),
        ("evaluate", ["digits/evaluate.yaml"]),
        ("predict", ["toy/model.yaml", "toy/predict.yaml"]),
    ],
)
def test_every_step_has_a_config_that_parses(command, configs):
    args = [a for c in configs for a in ("--config", str(CONFIG_DIR / c))]
    res = genunc(command, *args, "--print_config", cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "Diagonal last-layer Laplace posterior" in outputs and "of the kept half" in outputs
