import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a missing weight file must fail fast, never reach for a hub

import io
import json
import logging
import multiprocessing
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from genunc_lightning.data import DiffusionDataModule, SeedDataModule
from genunc_lightning.evaluation import Evaluation
from genunc_lightning.laplace import FisherAccumulationCallback, LaplaceFitModule, fisher_batch
from genunc_lightning.seeding import example_seeds
from genunc_lightning.uncertainty import GenerativeUncertaintyModule, PixelLikelihood, ScoredSampleWriter

torch.set_num_threads(2)

# Tests that need processes of their own (DDP ranks, nodes, a run to kill) start them from one fork
# server that imported the package once: a new interpreter would spend 12 s importing it again each
# time. (Forked from a clean server, not from this process, whose OpenMP threads a fork would not carry.)
multiprocessing.set_forkserver_preload(["genunc_lightning", "genunc_lightning.cli", "lightning.pytorch"])
DDP_START_METHOD = "forkserver"


@pytest.fixture(scope="session")
def ddp_start_method():
    """How the DDP tests start their ranks: ``DDPStrategy(start_method=...)``, ``mp.start_processes``."""
    return DDP_START_METHOD


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# --- `genunc ...` in this process ---------------------------------------------------------------


@dataclass
class CliRun:
    """What a `genunc` command left: its exit code and what it printed (Lightning's log lines included)."""

    returncode: int
    stdout: str
    stderr: str


def _genunc(*args, cwd):
    """Runs ``genunc ARGS`` from ``cwd`` in this process, as the console script would.

    Starting an interpreter costs 12 s of imports on a 2-core machine, so the tests run the CLI here
    (or in a process forked from the fork server, ``genunc_process``); the README's commands in
    tests/test_own_repo.py start the installed console script.
    """
    from genunc_lightning.cli import main

    out, err = io.StringIO(), io.StringIO()
    # Lightning's loggers hold the stderr of import time: point them at this run's stderr meanwhile.
    handlers = [h for name in ("lightning.pytorch", "lightning.fabric") for h in logging.getLogger(name).handlers
                if isinstance(h, logging.StreamHandler)]  # fmt: skip
    streams = [h.setStream(err) for h in handlers]
    old_cwd, old_path = os.getcwd(), list(sys.path)
    try:
        os.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main([str(a) for a in args])
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        os.chdir(old_cwd)
        sys.path[:] = old_path
        for handler, stream in zip(handlers, streams, strict=True):
            handler.setStream(stream)
    return CliRun(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def genunc():
    """``genunc(*args, cwd)`` -> CliRun(returncode, stdout, stderr): the CLI, run in this process."""
    return _genunc


def _cli_in_this_process(args, cwd, env, stdout, stderr):
    """The body of a `genunc` process: its environment, folder and output files, then the CLI."""
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, stdout), (2, stderr)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    from genunc_lightning.cli import main

    main(args)  # SystemExit(code) is the process's exit code


class GenuncProcess:
    """``genunc ARGS`` in a process of its own, forked from the fork server: pid, wait, stdout, stderr."""

    def __init__(self, *args, cwd, env=None):
        self._out, self._err = Path(cwd) / f".genunc-{id(self)}.out", Path(cwd) / f".genunc-{id(self)}.err"
        context = multiprocessing.get_context(DDP_START_METHOD)
        self.process = context.Process(target=_cli_in_this_process, args=([str(a) for a in args], str(cwd),
                                       env or {}, str(self._out), str(self._err)))  # fmt: skip
        self.process.start()
        self.pid = self.process.pid

    def wait(self, timeout=300):
        """The exit code, once the process ended."""
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.process.kill()
            raise TimeoutError(f"genunc ran past {timeout} s")
        return self.process.exitcode

    @property
    def stdout(self):
        return self._out.read_text()

    @property
    def stderr(self):
        return self._err.read_text()


@pytest.fixture(scope="session")
def genunc_process():
    """``genunc_process(*args, cwd, env=None)`` -> GenuncProcess: the CLI in a process of its own, started."""
    return GenuncProcess


# --- a tiny toy model, its posterior and predict runs (shared by the predict and reliability tests) ---


def _toy_model(tmp_path, hidden=32, seed=0, steps=8):
    from genunc_lightning.adapters import GaussianDiffusionAdapter
    from genunc_lightning.laplace import DiagonalLaplacePosterior, fisher_batch
    from genunc_lightning.models import MLPDenoiser
    from genunc_lightning.seeding import example_seeds

    torch.manual_seed(seed)
    model = MLPDenoiser(hidden=hidden, depth=2)
    adapter = GaussianDiffusionAdapter(model, "out", (2,), sampler="ddpm", steps=steps)
    x = torch.randn(64, 2)
    fb = fisher_batch(adapter, x, [example_seeds(0, range(64))])
    post = DiagonalLaplacePosterior.fit(model.out, "out", fb.diag, 64, float(fb.squared_residual_sum), fb.num_residuals)
    path = post.save(tmp_path / "posterior.safetensors")
    torch.save(model.state_dict(), tmp_path / "denoiser.pt")
    return adapter, path


def _predict(adapter, posterior, out_dir, num_samples=40, batch_size=16, devices=1, replace=False, **module_kwargs):
    from lightning.pytorch import Trainer

    from genunc_lightning.data import SeedDataModule
    from genunc_lightning.uncertainty import GenerativeUncertaintyModule, ScoredSampleWriter, read_scores

    module = GenerativeUncertaintyModule(adapter, str(posterior), **module_kwargs)
    writer = ScoredSampleWriter(str(out_dir), replace_other_run=replace)
    kwargs = dict(accelerator="cpu", devices=devices, logger=False, enable_progress_bar=False)
    if devices > 1:
        from lightning.pytorch.strategies import DDPStrategy

        kwargs["strategy"] = DDPStrategy(start_method=DDP_START_METHOD)
    trainer = Trainer(callbacks=[writer], enable_model_summary=False, **kwargs)
    trainer.predict(module, datamodule=SeedDataModule(num_samples, batch_size, seed=3), return_predictions=False)
    return read_scores(out_dir)


@pytest.fixture(scope="session")
def synthetic_run():
    """``synthetic_run(out_dir, num_samples, shape, batch_size=64)``: a finished run of random samples, no model."""
    from benchmarks.common import write_synthetic_run

    return write_synthetic_run


@pytest.fixture(scope="session")
def toy_model():
    """``toy_model(tmp_path, hidden=32, seed=0, steps=8)`` -> (DDPM adapter of a small MLP, posterior path)."""
    return _toy_model


@pytest.fixture(scope="session")
def predict():
    """``predict(adapter, posterior, out_dir, num_samples=40, batch_size=16, devices=1, replace=False, **module)``."""
    return _predict


# --- the Fisher's brute-force reference (per example, per draw, float64) -----------------------


def one_example(batch, b):
    """Example b of a tensor, tuple or dict batch, as a batch of one."""
    if isinstance(batch, dict):
        return {k: v[b : b + 1] for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(v[b : b + 1] for v in batch)
    return batch[b : b + 1]


def batch_size(batch):
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch[0] if isinstance(batch, tuple) else batch
    return first.shape[0]


def brute_force_fisher(adapter, batch, seeds_per_draw):
    """Σ_b mean_k (∂ loss_bk / ∂θ)², one autograd call per example and draw, float64."""
    layer = adapter.last_layer_module
    params = dict(layer.named_parameters())
    h = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    for seeds in seeds_per_draw:
        for b in range(batch_size(batch)):
            loss = adapter.loss(one_example(batch, b), seeds[b : b + 1]).sum()
            grads = torch.autograd.grad(loss, list(params.values()))
            for n, g in zip(params, grads, strict=True):
                h[n] += g.double() ** 2 / len(seeds_per_draw)
    return h


def _assert_fisher_close(adapter, batch, draws=1, rtol=1e-6, atol_scale=1e-12):
    """Our Fisher equals the brute force (float64 models: rtol 1e-6; float32: pass rtol 1e-4, atol_scale 1e-8)."""
    seeds = [example_seeds(0, range(batch_size(batch)), stream=k) for k in range(draws)]
    ours = fisher_batch(adapter, batch, seeds)
    ref = brute_force_fisher(adapter, batch, seeds)
    assert set(ours.diag) == set(ref)
    for name in ref:
        assert ref[name].abs().max() > 0
        torch.testing.assert_close(
            ours.diag[name], ref[name], rtol=rtol, atol=atol_scale * ref[name].abs().max().item()
        )
    return ours


@pytest.fixture(scope="session")
def assert_fisher_close():
    """``assert_fisher_close(adapter, batch, draws=1, rtol=1e-6, atol_scale=1e-12)``: ours against the brute force."""
    return _assert_fisher_close


# --- fit_laplace -> predict -> evaluate for any adapter ----------------------------------------

TRAINER = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


def _fit_predict_evaluate(tmp_path, adapter, train_data, reference_images, num_samples, batch_size, keep, **module):
    """Runs the three steps on tiny data and returns the evaluation report (pixel score, 2 members)."""
    posterior = tmp_path / "posterior.safetensors"
    Trainer(callbacks=[FisherAccumulationCallback(output=str(posterior))], inference_mode=False, **TRAINER).predict(
        LaplaceFitModule(adapter), datamodule=DiffusionDataModule(train_data, batch_size=16), return_predictions=False
    )
    scored = GenerativeUncertaintyModule(adapter, str(posterior), [PixelLikelihood()], num_members=2, **module)
    Trainer(callbacks=[ScoredSampleWriter(str(tmp_path / "run"))], **TRAINER).predict(
        scored, datamodule=SeedDataModule(num_samples, batch_size, num_classes=adapter.num_classes),
        return_predictions=False,
    )  # fmt: skip
    reference = torch.utils.data.TensorDataset(reference_images)
    report = Evaluation(str(tmp_path / "run"), reference, reference_range=(-1.0, 1.0), keep=keep, random_subsets=2,
                        fractions=[1.0]).run()  # fmt: skip
    # Checks that hold for any adapter: every sample scored, scores that tell samples apart, and the
    # report's FID of all samples equal to torchmetrics' own FID on the same pixels.
    from torchmetrics.image.fid import FrechetInceptionDistance

    from genunc_lightning.uncertainty import read_scores
    from genunc_lightning.uncertainty.writer import read_shards

    table = read_scores(tmp_path / "run")
    assert sorted(table["index"].tolist()) == list(range(num_samples))
    assert torch.isfinite(table["pixel"]).all() and table["pixel"].std() > 0
    shards = read_shards(tmp_path / "run", columns=["sample"])
    fake = shards["sample"].flatten(1).double()
    real = ((reference_images.double() + 1) / 2).clamp(0, 1).flatten(1)
    fid = FrechetInceptionDistance(feature=_Features(real.shape[1]))
    fid.update(real, real=True)
    fid.update(fake, real=False)
    assert report["results"]["all samples"]["fid"] == pytest.approx(fid.compute().item(), rel=1e-4, abs=1e-6)
    return report


class _Features(torch.nn.Module):
    """Flattened pixels as FID features, in the form torchmetrics' FrechetInceptionDistance accepts."""

    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x.flatten(1)


@pytest.fixture(scope="session")
def fit_predict_evaluate():
    """``fit_predict_evaluate(tmp_path, adapter, train_data, reference_images, num_samples, batch_size, keep)``."""
    return _fit_predict_evaluate


# --- tiny foreign models built offline ---------------------------------------------------------


def _tiny_unet(num_classes=3):
    import diffusers

    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, num_class_embeds=num_classes,
    )  # fmt: skip


@pytest.fixture(scope="session")
def tiny_unet():
    """``tiny_unet(num_classes=3)``: a diffusers UNet2DModel on 1×8×8 images."""
    pytest.importorskip("diffusers")
    return _tiny_unet


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_clip_config():
    """An open_clip model config small enough to build offline in a test."""
    return TINY_CLIP


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    import open_clip

    root = tmp_path_factory.mktemp("clip")
    (root / "tiny-test-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(root / "tiny-test-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-test-clip").eval()
    torch.save(model.state_dict(), root / "weights.pt")
    return model, str(root / "weights.pt")
