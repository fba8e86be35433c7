"""Faults and bad input (issue 14): each test reproduces a defect found by a fault sweep, fixed since."""

import fcntl
import json
import math
import os
import re
import resource
import signal
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from safetensors import safe_open
from safetensors.torch import save_file

from genunc_lightning.adapters import GaussianDiffusionAdapter
from genunc_lightning.data import DiffusionDataModule, GaussianGrid2D, SeedDataModule
from genunc_lightning.evaluation import Evaluation, EvaluationError
from genunc_lightning.laplace import (
    DiagonalLaplacePosterior,
    FisherAccumulationCallback,
    LaplaceFitModule,
    PosteriorFileError,
    PosteriorMismatchError,
    fisher_batch,
)
from genunc_lightning.models import MLPDenoiser
from genunc_lightning.seeding import example_seeds
from genunc_lightning.uncertainty import GenerativeUncertaintyModule, PixelLikelihood, ScoredSampleWriter, read_scores
from genunc_lightning.uncertainty.writer import RunDirectoryError

TRAINER = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


def manifest(run):
    return json.loads((run / "manifest.json").read_text())


def evaluate(run, n=40):
    return Evaluation(str(run), torch.utils.data.TensorDataset(torch.randn(n, 2)), keep=10, random_subsets=1,
                      fractions=[1.0], combinations=[]).run()  # fmt: skip


# 2. ---------------------------------------------------------------------------------------------


def test_rerun_with_nothing_missing_rebuilds_a_lost_table(tmp_path, toy_model, predict):
    adapter, path = toy_model(tmp_path)
    full = predict(adapter, path, tmp_path / "run")
    (tmp_path / "run" / "scores.csv").unlink()  # as a crash between the last shard and the merge leaves it
    with pytest.raises(EvaluationError, match="no scores.csv.*Re-run the same `genunc predict`"):
        evaluate(tmp_path / "run")
    again = predict(adapter, path, tmp_path / "run")
    assert all(torch.equal(again[k], full[k]) for k in full)
    assert manifest(tmp_path / "run")["complete"] is True  # 10: a re-run of a finished run stays complete


# 3. ---------------------------------------------------------------------------------------------


def test_a_second_run_into_a_directory_being_written_is_refused(tmp_path, toy_model, predict):
    adapter, path = toy_model(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a running `genunc predict` holds
    try:
        with pytest.raises(RunDirectoryError, match="Another `genunc predict` is writing into"):
            predict(adapter, path, run)
        assert not (run / "shards").exists() and not (run / "manifest.json").exists()
    finally:
        os.close(fd)
    assert len(predict(adapter, path, run)["index"]) == 40  # once the other run ended


# 4. ---------------------------------------------------------------------------------------------


def test_nan_weights_fail_the_run_and_leave_nothing(tmp_path, toy_model, predict):
    adapter, path = toy_model(tmp_path)
    with torch.no_grad():
        adapter.denoiser.inp.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"kept samples .* are NaN or infinite: check the checkpoint"):
        predict(adapter, path, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_members_that_diverge_score_infinite_uncertainty_not_nan(tmp_path, toy_model):
    adapter, path = toy_model(tmp_path)
    module = GenerativeUncertaintyModule(adapter, str(path), num_members=2, temperature=1e36)  # absurdly wide
    batch = {"index": torch.arange(6), "seed": torch.arange(6), "class": torch.full((6,), -1)}
    with pytest.warns(UserWarning, match="members whose samples diverged"):
        out = module.predict_step(batch, 0)
    assert torch.isinf(out["scores"]["pixel"]).any() and not torch.isnan(out["scores"]["pixel"]).any()
    assert torch.isfinite(out["sample"]).all()  # the kept samples use the pretrained weights


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [("fisher.weight", float("nan"), "NaN, infinite or negative"), ("fisher.bias", -1.0, "NaN, infinite or negative"),
     ("sigma", "nan", "must be positive and finite")],
)  # fmt: skip
def test_posterior_files_with_nan_or_negative_entries_are_refused(tmp_path, toy_model, key, value, match):
    _, path = toy_model(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    if key in tensors:
        tensors[key].view(-1)[0] = value
    else:
        meta[key] = value
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(PosteriorFileError, match=match):
        DiagonalLaplacePosterior.load(tmp_path / "bad.safetensors")


# 5. ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "match"), [({"steps": 0}, r"steps \(T\).*got 0"),
                                               ({"member_steps": 0}, r"member_steps \(T'\).*got 0"),
                                               ({"steps": -5}, r"steps \(T\).*got -5"),
                                               ({"steps": 2.5}, r"steps \(T\).*got 2.5")])  # fmt: skip
def test_zero_or_negative_steps_are_errors_not_defaults(tmp_path, toy_model, kwargs, match):
    adapter, path = toy_model(tmp_path)
    with pytest.raises(ValueError, match=match):
        GenerativeUncertaintyModule(adapter, str(path), **kwargs)


# 6 and 7. ---------------------------------------------------------------------------------------


def conditional_model(tmp_path):
    torch.manual_seed(0)
    model = MLPDenoiser(hidden=16, depth=1, num_classes=3)
    adapter = GaussianDiffusionAdapter(model, "out", (2,), num_classes=3, sampler="ddim", steps=4)
    fb = fisher_batch(adapter, (torch.randn(8, 2), torch.arange(8) % 3), [example_seeds(0, range(8))])
    post = DiagonalLaplacePosterior.fit(model.out, "out", fb.diag, 8, float(fb.squared_residual_sum), fb.num_residuals)
    return adapter, post.save(tmp_path / "cond.safetensors")


def predict_classes(adapter, path, run, **data):
    module = GenerativeUncertaintyModule(adapter, str(path), num_members=2)
    Trainer(callbacks=[ScoredSampleWriter(str(run))], **TRAINER).predict(
        module, datamodule=SeedDataModule(12, 4, **data), return_predictions=False
    )
    return read_scores(run)


@pytest.mark.parametrize(("data", "match"), [({"classes": [0, 5]}, r"ask for classes \[5\]: set data.num_classes"),
                                             ({}, r"ask for classes \[-1\]: the data gives none")])  # fmt: skip
def test_a_bad_class_fails_clearly_and_the_corrected_command_then_runs(tmp_path, data, match):
    adapter, path = conditional_model(tmp_path)
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        predict_classes(adapter, path, run, **data)
    assert not run.exists()  # no manifest left to refuse the corrected command
    assert set(predict_classes(adapter, path, run, num_classes=3)["class"].tolist()) <= {0, 1, 2}


def test_a_rerun_that_fails_before_its_first_shard_restores_the_previous_manifest(tmp_path, monkeypatch):
    adapter, path = conditional_model(tmp_path)
    run = tmp_path / "run"
    predict_classes(adapter, path, run, num_classes=3)
    (run / "scores.csv").unlink()
    for shard in (run / "shards").iterdir():
        shard.unlink()
    before = (run / "manifest.json").read_text()

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(GenerativeUncertaintyModule, "predict_step", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        predict_classes(adapter, path, run, num_classes=3)
    assert (run / "manifest.json").read_text() == before and json.loads(before)["complete"] is True


def test_evaluate_names_missing_shards_and_a_damaged_manifest(tmp_path, toy_model, predict):
    adapter, path = toy_model(tmp_path)
    run = tmp_path / "run"
    predict(adapter, path, run, batch_size=20)
    shards = sorted((run / "shards").iterdir())
    shards[1].rename(tmp_path / "aside")
    with pytest.raises(EvaluationError, match=r"lack 20 samples of scores.csv \(first: \[20, 21"):
        evaluate(run)
    shards[0].unlink()
    with pytest.raises(EvaluationError, match="holds no shards, though scores.csv lists 40"):
        evaluate(run)
    (run / "manifest.json").write_text("{not json")
    with pytest.raises(EvaluationError, match=r"manifest.json is not valid JSON"):
        evaluate(run)
    with pytest.raises(RunDirectoryError, match=r"manifest.json is not valid JSON"):
        predict(adapter, path, run)


def test_an_absurd_sample_count_fails_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="num_samples=1000000000000 is more than one run directory holds"):
        SeedDataModule(num_samples=1e12)
    with pytest.raises(ValueError, match="whole number, got 2.5"):
        SeedDataModule(num_samples=2.5)


# 8. ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["directory", "read-only"])
def test_fit_laplace_checks_its_output_before_the_fisher_pass(tmp_path, monkeypatch, where):
    if where == "read-only" and os.geteuid() == 0:
        output = "/proc/genunc-cannot-write-here/posterior.safetensors"  # unwritable even for root
    elif where == "read-only":
        (tmp_path / "ro").mkdir(mode=0o500)
        output = str(tmp_path / "ro" / "posterior.safetensors")
    else:
        output = str(tmp_path)
    calls = []
    monkeypatch.setattr(LaplaceFitModule, "predict_step", lambda *a, **k: calls.append(1))
    module = LaplaceFitModule(GaussianDiffusionAdapter(MLPDenoiser(hidden=8, depth=1), "out", (2,)))
    with pytest.raises(OSError, match="is a directory" if where == "directory" else "Cannot write the posterior"):
        Trainer(callbacks=[FisherAccumulationCallback(output=output)], inference_mode=False, **TRAINER).predict(
            module, datamodule=DiffusionDataModule(GaussianGrid2D(num_points=20), batch_size=10),
            return_predictions=False,
        )  # fmt: skip
    assert calls == []


# 9. ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["index", "class", "realism", "rarity", "random", "ours + realism", "a,b"])
def test_reserved_or_unreadable_score_names_are_refused(tmp_path, toy_model, name):
    adapter, path = toy_model(tmp_path)
    with pytest.raises(ValueError, match="reserved|not a plain name"):
        GenerativeUncertaintyModule(adapter, str(path), [PixelLikelihood(name=name)])


# 10. --------------------------------------------------------------------------------------------


def test_lowering_num_samples_gives_a_table_of_that_size(tmp_path, toy_model, predict):
    adapter, path = toy_model(tmp_path)
    full = predict(adapter, path, tmp_path / "run", num_samples=40)
    fewer = predict(adapter, path, tmp_path / "run", num_samples=20)
    assert torch.equal(fewer["index"], torch.arange(20)) and torch.equal(fewer["pixel"], full["pixel"][:20])
    assert manifest(tmp_path / "run")["num_samples"] == 20
    assert evaluate(tmp_path / "run")["samples"] == 20


def test_an_unconditional_model_records_no_classes(tmp_path, toy_model):
    adapter, path = toy_model(tmp_path)
    module = GenerativeUncertaintyModule(adapter, str(path), num_members=2)
    Trainer(callbacks=[ScoredSampleWriter(str(tmp_path / "run"))], **TRAINER).predict(
        module, datamodule=SeedDataModule(10, 5, num_classes=4), return_predictions=False
    )
    assert set(read_scores(tmp_path / "run")["class"].tolist()) == {-1}


# Known errors through the CLI: one line, non-zero exit, no traceback. -------------------------------


def test_cli_reports_known_errors_in_one_line(tmp_path, genunc):
    from genunc_lightning.cli import CONFIG_DIR

    toy = CONFIG_DIR / "toy"
    res = genunc("predict", "--config", toy / "model.yaml", "--config", toy / "predict.yaml", "--model.checkpoint",
                 "null", "--model.posterior", tmp_path / "missing.safetensors", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 1
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("genunc predict: error: No posterior file at") and "genunc fit_laplace" in last


# Runs across nodes: two launches of the same command, NODE_RANK 0 and 1, on the loopback address. -----


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_yaml(tmp_path, posterior):
    path = tmp_path / "model.yaml"
    path.write_text(
        "model:\n  adapter:\n    class_path: genunc_lightning.adapters.GaussianDiffusionAdapter\n    init_args:\n"
        "      denoiser:\n        class_path: genunc_lightning.models.MLPDenoiser\n"
        "        init_args: {hidden: 32, depth: 2}\n"
        "      last_layer: out\n      sample_shape: [2]\n      sampler: ddpm\n      steps: 8\n"
        f"  checkpoint: {tmp_path / 'denoiser.pt'}\n  posterior: {posterior}\n  num_members: 3\n"
        "data:\n  num_samples: 30\n  batch_size: 4\n  seed: 1\n"
        "trainer:\n  accelerator: cpu\n  enable_progress_bar: false\n  logger: false\n"
    )
    return path


def _two_nodes(genunc_process, config, outputs, cwd):
    port = str(_free_port())
    multi = ["--trainer.strategy", "ddp", "--trainer.num_nodes", "2", "--trainer.devices", "1"]
    nodes = [
        genunc_process("predict", "--config", config, "--writer.output_dir", out, *multi, cwd=cwd,
                       env={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(rank)})
        for rank, out in enumerate(outputs)
    ]  # fmt: skip
    return [(node.wait(timeout=300), node.stderr) for node in nodes]


def test_two_nodes_on_one_machine_equal_one_process(tmp_path, toy_model, genunc, genunc_process):
    _, posterior = toy_model(tmp_path)
    config = _model_yaml(tmp_path, posterior)
    single = genunc("predict", "--config", config, "--writer.output_dir", tmp_path / "single", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    results = _two_nodes(genunc_process, config, [tmp_path / "shared", tmp_path / "shared"], tmp_path)
    for code, err in results:
        assert code == 0, err[-3000:]
    one, two = read_scores(tmp_path / "single"), read_scores(tmp_path / "shared")
    assert torch.equal(one["index"], torch.arange(30)) and torch.equal(two["index"], one["index"])
    # The ranks' batches hold other samples and shapes than the single process's: within the stated bound.
    assert torch.equal(two["seed"], one["seed"]) and (two["pixel"] - one["pixel"]).abs().max() <= 1e-6
    assert manifest(tmp_path / "shared")["world_size"] == 2


def test_a_node_whose_shards_are_not_shared_is_named(tmp_path, toy_model, genunc_process):
    _, posterior = toy_model(tmp_path)
    config = _model_yaml(tmp_path, posterior)
    outputs = [tmp_path / "node0-disk", tmp_path / "node1-disk"]
    (code0, err0), (code1, _) = _two_nodes(genunc_process, config, outputs, tmp_path)
    assert code0 == 1 and code1 == 1
    last = err0.strip().splitlines()[-1]
    assert "Shards written by node 1 (global rank 1) are not visible" in last, err0[-3000:]
    assert "filesystem shared by every node" in last


# Round 3 (issue 20). ---------------------------------------------------------------------------------


def posterior_on(adapter, layer, tmp_path):
    """A posterior fitted on ``layer`` of the adapter's denoiser, saved."""
    fit_adapter = GaussianDiffusionAdapter(adapter.denoiser, layer, (2,), sampler="ddpm", steps=8)
    fb = fisher_batch(fit_adapter, torch.randn(16, 2), [example_seeds(0, range(16))])
    post = DiagonalLaplacePosterior.fit(fit_adapter.last_layer_module, layer, fb.diag, 16,
                                        float(fb.squared_residual_sum), fb.num_residuals)  # fmt: skip
    return post.save(tmp_path / f"posterior-{layer}.safetensors")


@pytest.mark.parametrize("adapter_layer", ["blocks.0.1", "out"], ids=["same shape", "other shape"])
def test_a_posterior_of_another_layer_is_refused_naming_both(tmp_path, toy_model, adapter_layer):
    adapter, _ = toy_model(tmp_path)
    path = posterior_on(adapter, "blocks.1.1", tmp_path)
    other = GaussianDiffusionAdapter(adapter.denoiser, adapter_layer, (2,), sampler="ddpm", steps=8)
    with pytest.raises(PosteriorMismatchError, match=rf"fitted on last layer 'blocks.1.1', but the adapter's "
                                                      rf"last_layer is '{adapter_layer}'"):  # fmt: skip
        GenerativeUncertaintyModule(other, str(path), num_members=2)
    GenerativeUncertaintyModule(GaussianDiffusionAdapter(adapter.denoiser, "blocks.1.1", (2,)), str(path))  # the fix


# 3. A shard of another configuration is regenerated by predict and refused by evaluate, naming the file.


def test_a_shard_of_another_run_is_regenerated_not_merged(tmp_path, toy_model, predict):
    adapter, path = toy_model(tmp_path)
    clean = predict(adapter, path, tmp_path / "clean", batch_size=8, posterior_seed=0)
    predict(adapter, path, tmp_path / "run", batch_size=8, posterior_seed=0)
    predict(adapter, path, tmp_path / "other", batch_size=8, posterior_seed=1)
    ours, theirs = (sorted((tmp_path / d / "shards").iterdir())[1] for d in ("run", "other"))
    ours.unlink()
    foreign = tmp_path / "run" / "shards" / theirs.name
    foreign.write_bytes(theirs.read_bytes())  # the same indices, from another posterior draw
    with pytest.raises(EvaluationError, match=rf"Shard {foreign} belongs to another run"):
        evaluate(tmp_path / "run")
    with pytest.warns(UserWarning, match=rf"Shard {foreign} belongs to another run.*generated again"):
        again = predict(adapter, path, tmp_path / "run", batch_size=8, posterior_seed=0)
    assert not foreign.exists() and all(torch.equal(again[k], clean[k]) for k in clean)


# 4. SIGTERM stops the Fisher pass (the predict run's case is in test_predict.py, with its rerun).


def test_sigterm_stops_the_fisher_pass_with_a_non_zero_exit(tmp_path):
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    batches = []

    class SignalledFit(LaplaceFitModule):
        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            batches.append(batch_idx)
            if batch_idx == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler is installed for the run
            return super().predict_step(batch, batch_idx, dataloader_idx)

    module = SignalledFit(GaussianDiffusionAdapter(MLPDenoiser(hidden=8, depth=1), "out", (2,)))
    output = tmp_path / "new" / "posterior.safetensors"
    with pytest.raises(SIGTERMException) as stopped:
        Trainer(callbacks=[FisherAccumulationCallback(output=str(output))], inference_mode=False, **TRAINER).predict(
            module, datamodule=DiffusionDataModule(GaussianGrid2D(num_points=100), batch_size=10),
            return_predictions=False,
        )  # fmt: skip
    assert stopped.value.code == 128 + signal.SIGTERM and batches == [0, 1]  # not the other 8 batches
    assert not output.exists() and not (tmp_path / "new").exists()  # and no empty folder left behind


# 5 and 6. The reference-feature cache: keyed by what determines the features, checked, repaired.


class Extractor(torch.nn.Module):
    def __init__(self, act):
        super().__init__()
        torch.manual_seed(0)
        self.proj, self.act = torch.nn.Linear(2, 4), act

    def forward(self, x):
        return self.act(self.proj(x))


def cached_fid(run, cache, extractor):
    reference = torch.utils.data.TensorDataset(torch.randn(40, 2, generator=torch.Generator().manual_seed(1)))
    evaluation = Evaluation(str(run), reference, extractor, keep=10, random_subsets=1, fractions=[1.0],
                            combinations=[], cache_dir=str(cache), output_dir=str(run / "ev"))  # fmt: skip
    return evaluation.run()["results"]["all samples"]["fid"]


def test_the_reference_cache_is_not_reused_for_another_extractor_or_content(tmp_path, toy_model, predict):
    adapter, path = toy_model(tmp_path)
    predict(adapter, path, tmp_path / "run")
    fresh = {}
    for name, act in (("relu", torch.nn.ReLU()), ("tanh", torch.nn.Tanh())):  # the same weights
        fresh[name] = cached_fid(tmp_path / "run", tmp_path / f"only-{name}", Extractor(act))
    cache = tmp_path / "cache"
    assert cached_fid(tmp_path / "run", cache, Extractor(torch.nn.ReLU())) == fresh["relu"]
    assert cached_fid(tmp_path / "run", cache, Extractor(torch.nn.Tanh())) == fresh["tanh"]  # not ReLU's file
    assert len(list(cache.iterdir())) == 2
    # A file of the right name and shape but other values is detected and recomputed.
    tanh_file = next(p for p in cache.iterdir() if p.stat().st_mtime_ns == max(q.stat().st_mtime_ns
                                                                               for q in cache.iterdir()))  # fmt: skip
    with safe_open(str(tanh_file), framework="pt") as f:
        meta, feats = f.metadata(), f.get_tensor("features")
    save_file({"features": feats + 1.0}, str(tanh_file), metadata=meta)
    with pytest.warns(UserWarning, match="does not hold the features it was written with"):
        assert cached_fid(tmp_path / "run", cache, Extractor(torch.nn.Tanh())) == fresh["tanh"]


def test_a_damaged_cache_file_is_recomputed_with_a_warning(tmp_path, toy_model, predict):
    adapter, path = toy_model(tmp_path)
    predict(adapter, path, tmp_path / "run")
    cache = tmp_path / "cache"
    fid = cached_fid(tmp_path / "run", cache, Extractor(torch.nn.ReLU()))
    (damaged,) = cache.iterdir()
    damaged.write_bytes(damaged.read_bytes()[:50])
    with pytest.warns(UserWarning, match="is unreadable.*computing the features again"):
        assert cached_fid(tmp_path / "run", cache, Extractor(torch.nn.ReLU())) == fid
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cached_fid(tmp_path / "run", cache, Extractor(torch.nn.ReLU())) == fid
    assert not [w for w in caught if "cache" in str(w.message)]  # repaired: the next run uses it without a word


# 7. Evaluate reads the samples shard by shard: its memory does not grow with the samples' size.


class PooledPixels(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)


def peak_rss_mb():
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def test_evaluate_memory_does_not_grow_with_the_samples(tmp_path, synthetic_run):
    shape, num_samples = (3, 64, 64), 2000
    synthetic_run(tmp_path / "run", num_samples, shape, batch_size=50)
    samples_mb = num_samples * math.prod(shape) * 4 / 2**20  # 94 MiB of samples on disk
    reference = torch.utils.data.TensorDataset(torch.rand(200, *shape))
    evaluation = Evaluation(str(tmp_path / "run"), reference, PooledPixels(), keep=0.5, random_subsets=2,
                            fractions=[0.5, 1.0], combinations=[])  # fmt: skip
    evaluation.run()  # once before measuring: imports, plotting caches
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak resident set size (Linux)
    before = peak_rss_mb()
    report = evaluation.run()
    grown = peak_rss_mb() - before
    assert report["samples"] == num_samples and (tmp_path / "run" / "evaluation" / "extremes_synthetic.png").is_file()
    # Holding the samples even once would grow it by 94 MiB (the old code: 187); what is left is fixed overhead.
    assert grown < 0.5 * samples_mb, f"evaluate grew by {grown:.0f} MiB for {samples_mb:.0f} MiB of samples"


# 8. A manifest whose num_samples no directory holds is refused before anything is allocated.


@pytest.mark.parametrize(("num_samples", "match"), [(10**9, "gives num_samples 1000000000, which no run directory"),
                                                    (10**8, "missing 99999960 of 100000000 indices")])  # fmt: skip
def test_a_huge_num_samples_in_the_manifest_is_refused_in_little_memory(tmp_path, toy_model, predict, num_samples,
                                                                        match):  # fmt: skip
    adapter, path = toy_model(tmp_path)
    predict(adapter, path, tmp_path / "run")
    data = manifest(tmp_path / "run")
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({**data, "num_samples": num_samples}))
    Path("/proc/self/clear_refs").write_text("5")
    before = peak_rss_mb()
    with pytest.raises(EvaluationError, match=match):
        evaluate(tmp_path / "run")
    assert peak_rss_mb() - before < 100  # a list of 10^8 missing indices alone takes gigabytes


# 9. A damaged posterior (N < n, or N < 1) is refused at load and at construction.


@pytest.mark.parametrize("dataset_size", ["-2000", "0", "63"])
def test_a_posterior_with_fewer_training_examples_than_it_saw_is_refused(tmp_path, toy_model, dataset_size):
    _, path = toy_model(tmp_path)  # fitted on n = 64 examples
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={**meta, "dataset_size": dataset_size})
    with pytest.raises(PosteriorFileError, match=rf"dataset_size N = {dataset_size} is smaller than the 64 examples"):
        DiagonalLaplacePosterior.load(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="N ≥ n ≥ 1"):
        DiagonalLaplacePosterior.load(path).with_scale(dataset_size=int(dataset_size))


# 10. fit_laplace on an empty dataset: one line, no posterior, no folder.


def test_fit_laplace_on_an_empty_dataset_is_an_error(tmp_path, genunc):
    with pytest.raises(ValueError, match=r"The dataset \(TensorDataset\) is empty"):
        DiffusionDataModule(torch.utils.data.TensorDataset(torch.zeros(0, 2)))

    class EmptyLoader(DiffusionDataModule):  # any data module whose Fisher pass has no batch
        def predict_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 2)))

    output = tmp_path / "out" / "posterior.safetensors"
    module = LaplaceFitModule(GaussianDiffusionAdapter(MLPDenoiser(hidden=8, depth=1), "out", (2,)))
    with pytest.raises(ValueError, match="The Fisher pass saw no examples"):
        Trainer(callbacks=[FisherAccumulationCallback(output=str(output))], inference_mode=False, **TRAINER).predict(
            module, datamodule=EmptyLoader(GaussianGrid2D(num_points=4)), return_predictions=False
        )
    assert not (tmp_path / "out").exists()


# 11. Damaged run files: one line naming the file and the fix.


def damage(run, what):
    scores, manifest_path = run / "scores.csv", run / "manifest.json"
    if what == "manifest is a list":
        manifest_path.write_text("[1, 2]")
    elif what == "identity is a string":
        manifest_path.write_text(json.dumps({**manifest(run), "identity": "abc"}))
    elif what == "empty table":
        scores.write_text("")
    elif what == "short row":
        lines = scores.read_text().splitlines()
        scores.write_text("\n".join(lines[:3] + [lines[3].rsplit(",", 1)[0]] + lines[4:]) + "\n")
    elif what == "not a number":
        lines = scores.read_text().splitlines()
        scores.write_text("\n".join(lines[:5] + [lines[5].rsplit(",", 1)[0] + ",abc"] + lines[6:]) + "\n")
    elif what == "shard of another shape":
        shard = sorted((run / "shards").iterdir())[1]
        with safe_open(str(shard), framework="pt") as f:
            meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        save_file({**tensors, "sample": torch.zeros(len(tensors["index"]), 3)}, str(shard), metadata=meta)
        return shard


DAMAGE = {
    "manifest is a list": r"manifest.json is JSON but not a predict run's manifest .*this is list",
    "identity is a string": r"manifest.json is JSON but not a predict run's manifest",
    "empty table": r"scores.csv is empty or has no 'index,seed,class,…' header",
    "short row": r"scores.csv, line 4: 3 values for 4 columns",
    "not a number": r"scores.csv, line 6: column 'pixel' holds 'abc', which is not a number",
    "shard of another shape": r"holds other columns or shapes \(.*sample \[3\].*\) than the run's other shards",
}


@pytest.mark.parametrize("what", DAMAGE)
def test_damaged_run_files_give_one_line_naming_the_file(tmp_path, toy_model, predict, genunc, what):
    adapter, path = toy_model(tmp_path)
    run = tmp_path / "run"
    predict(adapter, path, run)
    named = damage(run, what) or (run / ("manifest.json" if "manifest" in what or "identity" in what else "scores.csv"))
    with pytest.raises(EvaluationError, match=DAMAGE[what]) as err:
        evaluate(run)
    assert str(named) in str(err.value) and "Re-run" in str(err.value)
    (tmp_path / "evaluate.yaml").write_text(
        f"run_dir: {run}\nreference:\n  class_path: genunc_lightning.data.GaussianGrid2D\nkeep: 10\nrandom_subsets: 1\n"
    )
    res = genunc("evaluate", "--config", tmp_path / "evaluate.yaml", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith("genunc evaluate: error: ")


# 12. A full disk: one line naming the path and the cause, and nothing partial.


@contextmanager
def disk_full():
    """Every write past 0 bytes fails with EFBIG, a real I/O error of the kind a full disk gives."""
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel ends the process
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


class FillsTheDisk(Callback):
    """The disk fills once the run has started (its manifest is written, its first shard not)."""

    def on_predict_start(self, trainer, pl_module):
        self.full = disk_full()
        self.full.__enter__()

    def on_exception(self, trainer, pl_module, exception):  # Lightning runs no teardown hook after a failure
        self.teardown(trainer, pl_module, "predict")

    def teardown(self, trainer, pl_module, stage):
        if getattr(self, "full", None) is not None:
            self.full.__exit__(None, None, None)
            self.full = None


def no_partial_files(root):
    return [p for p in Path(root).rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")] == []


def test_a_full_disk_is_one_os_error_naming_the_path(tmp_path, toy_model):
    adapter, path = toy_model(tmp_path)
    output = tmp_path / "refitted.safetensors"
    with pytest.raises(OSError, match=rf"Cannot write the posterior to {output}: .*File too large"):
        Trainer(callbacks=[FisherAccumulationCallback(output=str(output)), FillsTheDisk()], inference_mode=False,
                **TRAINER).predict(LaplaceFitModule(adapter), datamodule=DiffusionDataModule(
                    GaussianGrid2D(num_points=20), batch_size=10), return_predictions=False)  # fmt: skip
    module = GenerativeUncertaintyModule(adapter, str(path), num_members=2)
    with pytest.raises(OSError, match=r"Cannot write a scored-sample shard to .*shard-0+-0+15-.*File too large"):
        Trainer(callbacks=[ScoredSampleWriter(str(tmp_path / "run")), FillsTheDisk()], **TRAINER).predict(
            module, datamodule=SeedDataModule(40, 16), return_predictions=False)  # fmt: skip
    predict_ok = Trainer(callbacks=[ScoredSampleWriter(str(tmp_path / "run"))], **TRAINER)
    predict_ok.predict(module, datamodule=SeedDataModule(40, 16), return_predictions=False)
    evaluation = Evaluation(str(tmp_path / "run"), GaussianGrid2D(num_points=40), keep=10, random_subsets=1,
                            cache_dir=str(tmp_path / "cache"))  # fmt: skip
    with disk_full(), pytest.raises(OSError, match=r"Cannot write the reference-feature cache to .*File too large"):
        evaluation.reference_features()
    assert not output.exists() and no_partial_files(tmp_path) and not list((tmp_path / "cache").iterdir())


# 13. Data of the wrong shape: one line naming its shape and sample_shape.


def test_data_of_another_shape_than_the_model_is_one_line(tmp_path, genunc):
    adapter = GaussianDiffusionAdapter(MLPDenoiser(hidden=8, depth=1), "out", (2,))
    with pytest.raises(ValueError, match=r"items of shape \[3\] .* the model's sample_shape is \[2\]"):
        fisher_batch(adapter, torch.randn(4, 3), [example_seeds(0, range(4))])
    from genunc_lightning.cli import CONFIG_DIR

    toy = CONFIG_DIR / "toy"
    adapter_args = "--model.adapter.init_args"
    res = genunc("fit_laplace", "--config", toy / "model.yaml", "--config", toy / "fit_laplace.yaml",
                 "--model.checkpoint", "null", "--data.dataset.init_args.num_points", "20",
                 f"{adapter_args}.sample_shape", "[3]", f"{adapter_args}.denoiser.init_args.data_dim", "3",
                 "--laplace.output", tmp_path / "p.safetensors", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "the model's sample_shape is [3]" in res.stderr.strip().splitlines()[-1]


# Also: Lightning's advertising and its deprecation warning are not printed.


def test_runs_print_no_litlogger_tip_or_leafspec_warning(tmp_path, genunc):
    from genunc_lightning.cli import CONFIG_DIR

    toy = CONFIG_DIR / "toy"
    res = genunc(
        "fit", "--config", toy / "model.yaml", "--config", toy / "fit.yaml", "--trainer.max_steps", "1", cwd=tmp_path
    )  # its checkpoint goes to runs/toy in tmp_path
    assert res.returncode == 0, res.stderr[-2000:]
    assert "GPU available" in res.stderr  # Lightning's own lines still reach the user
    assert "Tip:" not in res.stderr and "LeafSpec" not in res.stderr, res.stderr[-2000:]
