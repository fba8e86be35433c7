"""A Lightning diffusion repository, unchanged (issue 13): the fixture in tests/lightning_repo, through the API
and through the CLI from its own folder, with its own Lightning checkpoint."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from genunc_lightning.adapters import DenoiserCallError, GaussianDiffusionAdapter, OwnSamplerAdapter
from genunc_lightning.data import DiffusionDataModule, SeedDataModule
from genunc_lightning.laplace import FisherAccumulationCallback, LaplaceFitModule
from genunc_lightning.seeding import derive_seed
from genunc_lightning.uncertainty import GenerativeUncertaintyModule, ScoredSampleWriter, read_scores
from genunc_lightning.uncertainty.writer import read_shards

FIXTURE = Path(__file__).resolve().parent / "lightning_repo"
TRAINER = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of the repository with a checkpoint its own Trainer wrote (hyperparameters hold a class)."""
    root = tmp_path_factory.mktemp("repo") / "lightning_repo"
    shutil.copytree(FIXTURE, root)
    sys.path.insert(0, str(root))
    from pixel_diffusion import PixelDiffusion
    from repo_data import Digits

    torch.manual_seed(0)
    module = PixelDiffusion()
    trainer = Trainer(max_steps=40, enable_checkpointing=False, **TRAINER)
    trainer.fit(module, torch.utils.data.DataLoader(Digits(), batch_size=64, shuffle=True))
    trainer.save_checkpoint(root / "checkpoints" / "last.ckpt")
    yield root, module
    sys.path.remove(str(root))


def adapter_for(root, cls=None):
    from genunc_glue import PixelDiffusionAdapter
    from pixel_diffusion import PixelDiffusion

    adapter = (cls or PixelDiffusionAdapter)(PixelDiffusion(), "model.head", (1, 8, 8), network="model",
                                             num_train_steps=100, steps=100, image_range=(-1, 1))  # fmt: skip
    adapter.load_weights(root / "checkpoints" / "last.ckpt")
    return adapter


def test_api_own_checkpoint_preprocessing_and_own_sampler(repo, tmp_path):
    root, trained = repo
    from repo_data import Digits

    with pytest.raises(Exception, match="Unsupported global"):  # what a plain weights-only load says
        torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    adapter = adapter_for(root)
    assert torch.equal(adapter.denoiser.model.head.weight, trained.model.head.weight)

    # Without the repo's rescaling the Fisher would see [0, 1] data: the plain adapter warns, the glue does not.
    with pytest.warns(UserWarning, match=r"looks like \[0, 1\] data.*override OwnSamplerAdapter.preprocess"):
        adapter_for(root, OwnSamplerAdapter).residual(Digits(limit=8)[:8], torch.arange(8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adapter.residual(Digits(limit=8)[:8], torch.arange(8))

    callback = FisherAccumulationCallback(output=None)
    Trainer(callbacks=[callback], inference_mode=False, **TRAINER).predict(
        LaplaceFitModule(adapter), datamodule=DiffusionDataModule(Digits(limit=200), batch_size=100),
        return_predictions=False,
    )  # fmt: skip
    module = GenerativeUncertaintyModule(adapter, callback.posterior, num_members=2)
    Trainer(callbacks=[ScoredSampleWriter(str(tmp_path / "run"))], **TRAINER).predict(
        module, datamodule=SeedDataModule(6, 6, seed=4), return_predictions=False
    )
    # The kept samples are the repository's own sampler's, from the batch's seeded RNG state.
    table = read_scores(tmp_path / "run")
    shards = read_shards(tmp_path / "run", columns=["index", "sample"])
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(*table["seed"].tolist()))
        own = adapter.denoiser(6)
    torch.testing.assert_close(shards["sample"][shards["index"].argsort()], (own + 1) / 2)
    assert (table["pixel"].std() > 0) and torch.isfinite(table["pixel"]).all()
    with pytest.raises(ValueError, match="runs a fixed set of 100 sampler steps"):
        GenerativeUncertaintyModule(adapter, callback.posterior, member_steps=20)


def test_a_forward_that_is_the_whole_sampler_fails_clearly_as_a_denoiser(repo):
    root, trained = repo
    adapter = GaussianDiffusionAdapter(trained, "model.head", (1, 8, 8), num_train_steps=100)
    with pytest.raises(DenoiserCallError, match=r"PixelDiffusion\(x_t, t\).*call_denoiser.*Bring your own"):
        adapter.residual(torch.rand(4, 1, 8, 8) * 2 - 1, torch.arange(4))


def readme_section_blocks():
    text = (FIXTURE.parents[1] / "README.md").read_text()
    section = text[text.index("### Bring your own LightningModule") :]
    section = section[: section.index("\n### ", 5)]
    return {lang: re.findall(rf"```{lang}\n(.*?)```", section, re.S) for lang in ("python", "yaml", "bash")}


def console_script(name):
    """The installed console script ``name``: where pip put it for this interpreter (a venv's bin/ too)."""
    return str(Path(sysconfig.get_path("scripts")) / name)


@pytest.mark.slow
def test_cli_from_the_repository_folder_as_the_readme_shows(repo, genunc, monkeypatch):
    root, _ = repo
    # As `make test PYTHON=venv/bin/python` runs it: the interpreter's scripts folder is not on PATH.
    kept = [d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "genunc").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join(kept))
    blocks = readme_section_blocks()
    assert blocks["python"][0] == (FIXTURE / "genunc_glue.py").read_text()
    assert blocks["yaml"][0] == (FIXTURE / "genunc.yaml").read_text()
    commands = [line.split() for line in blocks["bash"][0].splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["genunc", "fit_laplace"], ["genunc", "predict"], ["genunc", "evaluate"]]
    # The first through the installed console script, in a fresh interpreter that finds the repository's
    # modules from its folder alone; the others in this process (each start costs 12 s of imports).
    res = subprocess.run([console_script("genunc"), *commands[0][1:]], cwd=root, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    for command in commands[1:]:
        res = genunc(*command[1:], cwd=root)
        assert res.returncode == 0, res.stderr[-3000:]
    assert "random" in res.stdout and (root / "runs" / "predict" / "evaluation" / "evaluation.json").is_file()
    assert len(read_scores(root / "runs" / "predict")["index"]) == 40
