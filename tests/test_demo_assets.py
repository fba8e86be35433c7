"""The embedded default: shipped checkpoints, the configs that re-create them, the notebook."""

from pathlib import Path

import pytest
import torch
import yaml

from genunc_lightning.cli import CONFIG_DIR
from genunc_lightning.experiments.assets import SHIPPED, SNAPSHOTS, asset_path

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_checkpoints_are_small_and_load():
    from genunc_lightning.experiments.digits import DigitsFeatureEncoder

    files = [asset_path(name) for _, _, name in SHIPPED] + [asset_path(Path(s).name) for s in SNAPSHOTS]
    assert sum(f.stat().st_size for f in files) <= 16 * 1024 * 1024  # five 2.5 MB digits UNets, the rest small
    for arch in ("cnn", "mlp"):
        assert DigitsFeatureEncoder(arch)(torch.rand(3, 1, 8, 8)).shape[0] == 3
    with pytest.raises(FileNotFoundError, match="make assets"):
        asset_path("missing.safetensors")


@pytest.mark.parametrize(
    ("configs", "extra", "expected"),
    [
        (["digits/classifier_scorer.yaml"], [], ["classifier_scorer.ckpt"]),
        (["digits/classifier_evaluator.yaml"], [], ["classifier_evaluator.ckpt"]),
        # the sweep's snapshots, here after 2 and 3 of 3 steps
        (["digits/model.yaml", "digits/fit.yaml"], ["--trainer.callbacks.steps", "[2, 3]"],
         ["digits_unet_s2.safetensors", "digits_unet_s3.safetensors"]),
    ],
)  # fmt: skip
def test_configs_that_recreate_the_shipped_checkpoints_train(configs, extra, expected, tmp_path, genunc):
    args = [a for c in configs for a in ("--config", str(CONFIG_DIR / c))]
    overrides = ["--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir",
                 str(tmp_path), "--trainer.callbacks.dirpath", str(tmp_path), *extra]  # fmt: skip
    res = genunc("fit", *args, *overrides, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    written = sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".ckpt", ".safetensors"))
    assert written == expected


@pytest.mark.parametrize(
    ("command", "configs"),
    [
        ("fit_laplace", ["digits/model.yaml", "digits/fit_laplace.yaml"]),
        ("predict", ["digits/model.yaml", "digits/predict.yaml"]),
        ("evaluate", ["digits/evaluate.yaml"]),
        ("predict", ["toy/model.yaml", "toy/predict.yaml"]),
    ],
)
def test_every_step_has_a_config_that_parses(command, configs, genunc):
    args = [a for c in configs for a in ("--config", str(CONFIG_DIR / c))]
    res = genunc(command, *args, "--print_config", cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    printed = yaml.safe_load(res.stdout)
    for config in configs:  # every setting of every file reaches the parsed config
        assert set(yaml.safe_load((CONFIG_DIR / config).read_text())) <= set(printed), config


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "Diagonal last-layer Laplace posterior" in outputs and "of the kept half" in outputs
