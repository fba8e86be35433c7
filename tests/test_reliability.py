"""Faults and bad input (issue 14): each test reproduces a defect found by a fault sweep, fixed since."""

import fcntl
import json
import os

import pytest
import torch
from lightning.pytorch import Trainer
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
