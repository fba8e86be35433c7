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


def _table_rows(text: str, first_cell: str) -> list[list[str]]:
    """The cells of every Markdown table row of ``text`` whose first cell starts with ``first_cell``."""
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("|")
    ]
    return [r for r in rows if r[0].startswith(first_cell)]


def _table_after(text: str, heading_row: str) -> str:
    """The Markdown table of ``text`` whose header row starts with ``heading_row``."""
    start = text.index(heading_row)
    end = text.find("\n\n", start)
    return text[start : end if end >= 0 else None]


def test_the_readme_digits_figures_are_the_committed_reports():
    """The demo's table equals docs/demo_report.json, and the sweep's quoted gains docs/experiments_results.md."""
    readme = README.read_text()
    text = _table_after(readme, "| kept by (250 of 300) |")
    report = json.loads((README.parent / "docs" / "demo_report.json").read_text())
    primary = report["digits"]["primary"]
    assert report["digits"]["training_steps"] == 6000 and primary["sampler_steps"] == 50
    cls, pca = primary["spaces"]["classifier"], primary["spaces"]["pixel-pca"]
    for label, method in [("ours", "semantic"), ("paper preset", "semantic_paper"), ("pixel-space", "pixel"),
                          ("BayesDiff", "bayesdiff"), ("AU", "au"), ("realism", "realism")]:  # fmt: skip
        (row,) = _table_rows(text, label)
        c, p = cls["methods"][method], pca["methods"][method]
        assert row[1].split()[0] == f"{c['fid']:.1f}" and row[2].split()[0] == f"{c['kid']:.0f}", row
        assert row[3].split()[0] == f"{c['precision']:.3f}" and row[4].split()[0] == f"{p['fid']:.3f}", row
        assert row[5] == f"{100 * c['off_class']:.1f}%", row
        auroc = primary["auroc"]
        assert row[6] == f"{auroc['off_class'][method]:.2f} / {auroc['off_manifold'][method]:.2f}", row
    verdicts = {(v["method"], v["space"], v["metric"]): v for v in primary["verdicts"]}
    (ours,) = _table_rows(text, "ours (semantic")
    assert f"(p = {verdicts[('semantic', 'classifier', 'fid')]['p']:.3f})" in ours[1]
    assert verdicts[("semantic", "classifier", "fid")]["verdict"] == "holds" in ours[1]
    (floor,) = _table_rows(text, "real vs real (the floor")
    assert floor[1] == f"{cls['floor']['fid']:.2f} ± {cls['floor']['fid_std']:.2f}"
    assert floor[3] == f"{cls['floor']['precision']:.3f} ± {cls['floor']['precision_std']:.3f}"
    (null,) = _table_rows(text, "random (200 kept sets)")
    assert null[1] == f"{cls['null']['fid']:.1f} ± {cls['null']['fid_std']:.1f}"
    below = sum(v < 0 for v in cls["floor"]["values"]["kid"]) / len(cls["floor"]["values"]["kid"])
    assert f"{100 * below:.0f}% of the floor's 200 draws are below zero" in " ".join(readme.split())
    # the sweep's gains per regime, as the results file has them
    sweep = (README.parent / "docs" / "experiments_results.md").read_text()
    gains = {(int(r[0]), int(r[1])): r[6].split()[0] for r in _table_rows(sweep.split("###")[0], "") if r[0].isdigit()}
    regimes = {row[0].split(" (")[0]: row for row in _table_rows(_table_after(readme, "| regime | d of FID"), "")}
    assert all(gains[(150, t)] in regimes["undertrained"][2] for t in (5, 10, 50))
    assert all(gains[(6000, t)].replace("-", "−") in regimes["best model"][2] for t in (5, 10, 50))
    middle = [float(gains[(s, t)]) for s in (300, 600, 1500) for t in (5, 10, 50)]
    assert (
        f"gains −{-min(middle):.1f} to +{max(middle):.1f}, below zero at {sum(g < 0 for g in middle)}"
        in regimes["middle"][2]
    )
