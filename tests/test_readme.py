"""The README's walkthrough on a real model runs as written, with tiny local stand-ins for its files."""

import json
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(heading: str) -> str:
    """The first ```python block after ``heading``."""
    text = README.read_text()
    start = text.index(heading)
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


@pytest.mark.slow
def test_real_model_walkthrough_runs_as_written(tmp_path, tiny_unet, tiny_clip_config):
    diffusers = pytest.importorskip("diffusers")
    import open_clip

    from genunc_lightning.data import DigitsDataset
    from genunc_lightning.uncertainty import read_scores

    # The files the README names, built here: a diffusers folder, CLIP weights, a dataset.
    torch.manual_seed(0)
    tiny_unet(num_classes=None).save_pretrained(tmp_path / "model" / "unet")
    diffusers.DDIMScheduler(num_train_timesteps=100).save_pretrained(tmp_path / "model" / "scheduler")
    (tmp_path / "tiny-test-clip.json").write_text(json.dumps(tiny_clip_config))
    open_clip.add_model_config(tmp_path / "tiny-test-clip.json")
    torch.save(open_clip.create_model("tiny-test-clip").state_dict(), tmp_path / "clip.pt")
    stand_ins = {
        "MODEL_DIR": f"MODEL_DIR = {str(tmp_path / 'model')!r}",
        "SAMPLE_SHAPE": "SAMPLE_SHAPE = (1, 8, 8)",
        "TRAIN_SET": "TRAIN_SET = DigitsDataset()  # (image, label) pairs, for an unconditional model",
        "CLIP": f"CLIP = OpenCLIPEncoder('tiny-test-clip', pretrained={str(tmp_path / 'clip.pt')!r})",
        "FID_FEATURES": "FID_FEATURES = None  # the pixels",
        "NUM_SAMPLES, KEEP, BATCH": "NUM_SAMPLES, KEEP, BATCH = 24, 20, 8",
        "OUT": f"OUT = {str(tmp_path / 'church')!r}",
    }
    code = readme_block("### On a real model, with CLIP and Inception")
    for name, line in stand_ins.items():
        code, count = re.subn(rf"^{re.escape(name)} = .*$", line, code, flags=re.M)
        assert count == 1, f"the README block no longer sets {name}"
    namespace = {"DigitsDataset": DigitsDataset}
    exec(compile(code, "README.md", "exec"), namespace)

    report = namespace["report"]
    assert {"semantic", "realism", "rarity", "semantic + realism", "random"} <= set(report["results"])
    assert report["kept"] == 20 and report["samples"] == 24
    table = read_scores(tmp_path / "church" / "run")
    assert sorted(table["index"].tolist()) == list(range(24)) and torch.isfinite(table["semantic"]).all()
    assert namespace["fisher"].posterior.summary()["examples"] == 18  # 1% of the 1,797 digits


def test_layout_section_names_every_part_of_the_tree():
    """Every entry of the Layout block exists, and every folder and module of the package is named in it."""
    block = re.search(r"## Layout\n\n```\n(.*?)```", README.read_text(), re.S).group(1)
    root, named, folders = README.parent, set(), []
    for line in block.splitlines():
        depth = (len(line) - len(line.lstrip())) // 2
        if depth > len(folders):
            continue  # a description's second line
        folders = folders[:depth]
        entries = re.match(r"\s*([\w.]+/?(?:, [\w.]+/?)*)(?:\s|$)", line).group(1)
        for name in entries.split(", "):
            path = Path(*folders, name.rstrip("/"))
            assert (root / path).exists(), f"the README's Layout names {path}, which is not in the tree"
            named.add(path.as_posix())
        if entries.endswith("/"):
            folders.append(entries.rstrip("/"))
    package = root / "genunc_lightning"
    parts = {
        p.relative_to(root).as_posix() for p in package.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()
    }
    assert parts - {"genunc_lightning/__init__.py"} <= named, "parts of the package the Layout does not name"
    assert {"genunc_lightning/adapters/base.py", "tests"} <= named  # the parser reads nested and top-level entries
