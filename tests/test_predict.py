"""Scored sampling: scores, Trainer.predict under DDP, the writer, resume after SIGKILL, bad input."""

import copy
import json
import math
import os
import signal
import time

import numpy as np
import pytest
import torch

from genunc_lightning.adapters import GaussianDiffusionAdapter
from genunc_lightning.data.predict import missing_indices
from genunc_lightning.laplace import PosteriorMismatchError
from genunc_lightning.models import MLPDenoiser
from genunc_lightning.uncertainty import (
    GenerativeUncertaintyModule,
    PixelLikelihood,
    SemanticLikelihood,
    generative_uncertainty,
    member_variance,
    read_scores,
)
from genunc_lightning.uncertainty.writer import RunDirectoryError, read_shards

# --- the score --------------------------------------------------------------------------------


def test_zero_variance_gives_the_noise_entropy_exactly(tmp_path, toy_model):
    adapter, path = toy_model(tmp_path)
    encoder = torch.nn.Linear(2, 7)
    module = GenerativeUncertaintyModule(
        adapter, str(path), [SemanticLikelihood(encoder, noise_var=1e-3)], num_members=3, temperature=0.0
    )
    batch = {"index": torch.arange(5), "seed": torch.arange(5) + 100, "class": torch.full((5,), -1)}
    kept, members = module.generate_scored(batch["seed"], None)
    assert torch.equal(member_variance(encoder(members).detach()), torch.zeros(5, 7, dtype=torch.float64))
    out = module.predict_step(batch, 0)
    expected = 0.5 * 7 * math.log(2 * math.pi * math.e * 1e-3)
    # Exact up to the rounding of summing D equal terms versus multiplying by D.
    torch.testing.assert_close(
        out["scores"]["semantic"], torch.full((5,), expected, dtype=torch.float64), rtol=1e-15, atol=0
    )


def test_cheap_mode_rerun_removes_the_discretisation_gap(tmp_path, toy_model):
    adapter, path = toy_model(tmp_path, steps=10)
    batch = {"index": torch.arange(5), "seed": torch.arange(5) + 7, "class": torch.full((5,), -1)}
    zero = dict(num_members=2, member_steps=2, temperature=0.0)
    kept_mode = GenerativeUncertaintyModule(adapter, str(path), pretrained_member="kept", **zero)
    rerun = GenerativeUncertaintyModule(adapter, str(path), pretrained_member="rerun", **zero)
    # Kept sample (T steps) among T'-step members: a zero-variance posterior still has variance.
    _, gap_members = kept_mode.generate_scored(batch["seed"], None)
    assert member_variance(gap_members).min() > 0
    kept, members = rerun.generate_scored(batch["seed"], None)
    assert members.shape[0] == 3
    assert torch.equal(member_variance(members), torch.zeros(5, 2, dtype=torch.float64))
    out = rerun.predict_step(batch, 0)
    expected = 0.5 * 2 * math.log(2 * math.pi * math.e * 1e-3)
    torch.testing.assert_close(
        out["scores"]["pixel"], torch.full((5,), expected, dtype=torch.float64), rtol=1e-15, atol=0
    )
    # The kept sample is still the T-step sample, the same in both modes.
    assert torch.equal(out["sample"], kept_mode.predict_step(batch, 0)["sample"])
    assert torch.equal(out["sample"], kept)


@pytest.mark.parametrize(("mode", "member_steps", "nfe"), [("kept", 2, 10 + 3 * 2), ("rerun", 2, 10 + 4 * 2),
                                                          ("rerun", 10, 4 * 10), ("kept", 10, 4 * 10)])  # fmt: skip
def test_network_evaluations_per_sample_are_the_stated_bound(tmp_path, mode, member_steps, nfe, toy_model):
    adapter, path = toy_model(tmp_path, steps=10)
    module = GenerativeUncertaintyModule(adapter, str(path), num_members=3, member_steps=member_steps,
                                         pretrained_member=mode)  # fmt: skip
    rows = []
    handle = adapter.denoiser.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    module.predict_step({"index": torch.arange(4), "seed": torch.arange(4), "class": torch.full((4,), -1)}, 0)
    handle.remove()
    assert sum(rows) / 4 == nfe == module.network_evaluations_per_sample()


def test_identity_features_match_a_float64_numpy_reference():
    members = torch.randn(6, 4, 3, 5, 5)
    scores = PixelLikelihood(noise_var=0.01).score(members)
    f = members.double().numpy().reshape(6, 4, -1)
    var = ((f - f.mean(0)) ** 2).mean(0)
    ref = 0.5 * np.log(2 * np.pi * np.e * (var + 0.01)).sum(-1)
    np.testing.assert_allclose(scores.numpy(), ref, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_features_never_give_negative_variance(dtype):
    # A large mean and a tiny spread: E[f²] − E[f]² computed in half precision goes negative.
    feats = (50 + 0.3 * torch.randn(6, 8, 32)).to(dtype)
    naive = feats.pow(2).mean(0) - feats.mean(0).pow(2)
    assert (naive < 0).any()
    var = member_variance(feats)
    assert var.dtype == torch.float64 and (var >= 0).all()
    assert torch.isfinite(generative_uncertainty(feats, 1e-3)).all()


def test_variance_maps_and_members_without_the_pretrained_sample(tmp_path, toy_model):
    adapter, path = toy_model(tmp_path)
    module = GenerativeUncertaintyModule(
        adapter, str(path), num_members=3, include_pretrained=False, save_variance_maps=True, member_chunk=2
    )
    batch = {"index": torch.arange(4), "seed": torch.arange(4), "class": torch.full((4,), -1)}
    out = module.predict_step(batch, 0)
    assert out["variance_maps"].shape == (4, 2) and (out["variance_maps"] >= 0).all()
    members = module.generate_members(batch["seed"], None, module.member_steps)
    torch.testing.assert_close(out["variance_maps"], members.double().var(0, unbiased=False))


def test_member_chunking_does_not_change_scores(tmp_path, toy_model):
    adapter, path = toy_model(tmp_path)
    batch = {"index": torch.arange(6), "seed": torch.arange(6), "class": torch.full((6,), -1)}
    a = GenerativeUncertaintyModule(adapter, str(path), num_members=4, member_chunk=1).predict_step(batch, 0)
    b = GenerativeUncertaintyModule(adapter, str(path), num_members=4, member_chunk=4).predict_step(batch, 0)
    torch.testing.assert_close(a["scores"]["pixel"], b["scores"]["pixel"], rtol=1e-6, atol=1e-6)


# --- Trainer.predict, DDP, resume -------------------------------------------------------------


def test_scores_do_not_depend_on_batch_size_or_world_size(tmp_path, toy_model, predict):
    adapter, path = toy_model(tmp_path)
    one = predict(adapter, path, tmp_path / "one", batch_size=16)
    other_batch = predict(adapter, path, tmp_path / "b7", batch_size=7)
    two = predict(adapter, path, tmp_path / "two", batch_size=16, devices=2)
    assert torch.equal(one["index"], torch.arange(40))
    for table in (other_batch, two):
        assert torch.equal(table["index"], one["index"]) and torch.equal(table["seed"], one["seed"])
        assert (table["pixel"] - one["pixel"]).abs().max() <= 1e-6
    assert one["pixel"].std() > 0


def test_a_plain_encoder_is_identified_by_its_weights():
    torch.manual_seed(0)
    first, second = torch.nn.Linear(2, 3), torch.nn.Linear(2, 3)
    ident = [SemanticLikelihood(m).manifest_entry() for m in (first, second, first)]
    assert ident[0] != ident[1] and ident[0] == ident[2]


def test_writer_refuses_another_configuration(tmp_path, toy_model, predict):
    adapter, path = toy_model(tmp_path)
    predict(adapter, path, tmp_path / "run", num_members=2)
    with pytest.raises(RunDirectoryError, match="another configuration.*num_members"):
        predict(adapter, path, tmp_path / "run", num_members=3)
    # Asked to, the writer replaces the other run: the result equals a run into a fresh directory.
    replaced = predict(adapter, path, tmp_path / "run", num_members=3, replace=True)
    fresh = predict(adapter, path, tmp_path / "fresh", num_members=3)
    assert all(torch.equal(replaced[k], fresh[k]) for k in fresh)
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["identity"]["module"]["num_members"] == 3
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    for replace in (False, True):  # a directory that is not a predict run is never deleted
        with pytest.raises(RunDirectoryError, match="not a predict run directory"):
            predict(adapter, path, tmp_path / "junk", replace=replace)
    assert (tmp_path / "junk" / "file.txt").is_file()


def test_table_reads_leave_the_samples_on_disk_and_missing_indices_are_exact(tmp_path, toy_model, predict):
    adapter, path = toy_model(tmp_path)
    predict(adapter, path, tmp_path / "run", save_variance_maps=True)
    table = read_shards(tmp_path / "run", samples=False)
    assert set(table) == {"index", "seed", "class", "score.pixel"}
    assert {"sample", "variance_map"} <= set(read_shards(tmp_path / "run"))
    g = torch.Generator().manual_seed(0)
    index = torch.randperm(500, generator=g)[:300]
    assert missing_indices(index, 400) == sorted(set(range(400)) - set(index.tolist()))


def test_truncated_shard_is_detected_and_recomputed(tmp_path, toy_model, predict):
    adapter, path = toy_model(tmp_path)
    full = predict(adapter, path, tmp_path / "run", batch_size=8)
    shard = sorted((tmp_path / "run" / "shards").iterdir())[2]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(RunDirectoryError, match="Unreadable shard"):
        read_shards(tmp_path / "run")
    again = predict(adapter, path, tmp_path / "run", batch_size=8)
    for key in full:
        assert torch.equal(again[key], full[key])


def test_growing_num_samples_reuses_finished_ones(tmp_path, toy_model, predict):
    adapter, path = toy_model(tmp_path)
    small = predict(adapter, path, tmp_path / "run", num_samples=16)
    before = set((tmp_path / "run" / "shards").iterdir())
    bigger = predict(adapter, path, tmp_path / "run", num_samples=40)
    assert before <= set((tmp_path / "run" / "shards").iterdir())
    assert torch.equal(bigger["pixel"][:16], small["pixel"])


PREDICT_SCRIPT = """
import sys, torch
from genunc_lightning.cli import main
main(sys.argv[1:])
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["kill -9", "SIGTERM"])
def test_a_stopped_run_then_rerun_equals_an_uninterrupted_run(tmp_path, toy_model, genunc, genunc_process, signum):
    adapter, path = toy_model(tmp_path, hidden=128, steps=100)
    num_samples, batch = 240, 16  # 15 shards of about half a second each: time to kill the run halfway
    model_cfg = tmp_path / "model.yaml"
    model_cfg.write_text(
        "model:\n  adapter:\n    class_path: genunc_lightning.adapters.GaussianDiffusionAdapter\n    init_args:\n"
        "      denoiser:\n        class_path: genunc_lightning.models.MLPDenoiser\n"
        "        init_args: {hidden: 128, depth: 2}\n"
        "      last_layer: out\n      sample_shape: [2]\n      sampler: ddpm\n      steps: 100\n"
        f"  checkpoint: {tmp_path / 'denoiser.pt'}\n  posterior: {path}\n  num_members: 5\n"
        f"data:\n  num_samples: {num_samples}\n  batch_size: {batch}\n  seed: 1\n"
        "trainer:\n  accelerator: cpu\n  enable_progress_bar: false\n"
    )

    def args(out):
        return ["predict", "--config", str(model_cfg), "--writer.output_dir", str(out)]

    assert genunc(*args(tmp_path / "full"), cwd=tmp_path).returncode == 0
    # Only the run that is killed needs a process of its own; the uninterrupted run and the rerun go here.
    proc = genunc_process(*args(tmp_path / "killed"), cwd=tmp_path)
    shards = tmp_path / "killed" / "shards"
    deadline = time.time() + 300
    while time.time() < deadline and (not shards.is_dir() or len(list(shards.glob("shard-*"))) < 4):
        time.sleep(0.05)
    stopped_at = time.time()
    os.kill(proc.pid, signum)
    if signum == signal.SIGKILL:
        assert proc.wait() == -signal.SIGKILL
    else:  # Lightning's handler only sets a flag; the run stops after the batch in flight, exit status 128 + 15
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM and time.time() - stopped_at < 10
        assert "SIGTERM received: stopping after batch" in proc.stderr, proc.stderr[-3000:]
    written = len(list(shards.glob("shard-*")))
    total = num_samples // batch
    assert 4 <= written < total, f"kill came too late or too early: {written} of {total} shards"
    assert not (tmp_path / "killed" / "scores.csv").exists()
    rerun = genunc(*args(tmp_path / "killed"), cwd=tmp_path)
    assert rerun.returncode == 0 and f"{written * batch} samples already written" in rerun.stderr, rerun.stderr[-3000:]
    full, resumed = read_scores(tmp_path / "full"), read_scores(tmp_path / "killed")
    assert torch.equal(resumed["index"], torch.arange(num_samples))
    for key in full:
        assert torch.equal(resumed[key], full[key]), key


# --- bad input, before any sampling --------------------------------------------------------------


def test_bad_settings_fail_before_sampling(tmp_path, toy_model):
    adapter, path = toy_model(tmp_path)
    with pytest.raises(ValueError, match="at least 1"):
        GenerativeUncertaintyModule(adapter, str(path), num_members=0)
    with pytest.raises(ValueError, match=r"T' = 20\) must not exceed steps \(T = 8\)"):
        GenerativeUncertaintyModule(adapter, str(path), member_steps=20)
    other = GaussianDiffusionAdapter(MLPDenoiser(hidden=32, depth=2), "out", (2,))
    with pytest.raises(PosteriorMismatchError, match="other weights"):
        GenerativeUncertaintyModule(other, str(path))
    with pytest.raises(ValueError, match="must be distinct"):
        GenerativeUncertaintyModule(adapter, str(path), likelihoods=[PixelLikelihood(), PixelLikelihood()])


@pytest.mark.slow
@pytest.mark.parametrize("how", ["torch.compile(model)", "model.compile()"])
def test_a_compiled_denoiser_scores_as_eager_with_no_new_graphs_after_the_first_batch(tmp_path, toy_model, how):
    import torch._dynamo

    adapter, path = toy_model(tmp_path, steps=4)
    eager = GenerativeUncertaintyModule(adapter, str(path), num_members=2)
    batches = [{"index": torch.arange(4) + 4 * i, "seed": torch.arange(4) + 4 * i, "class": torch.full((4,), -1)}
               for i in range(3)]  # fmt: skip
    expected = [eager.predict_step(b, i)["scores"]["pixel"] for i, b in enumerate(batches)]
    eager.on_predict_end()

    torch._dynamo.reset()
    model = adapter.denoiser
    if how == "torch.compile(model)":
        compiled = torch.compile(model)
    else:
        compiled = copy.deepcopy(model)
        compiled.compile()
    compiled_adapter = GaussianDiffusionAdapter(compiled, "out", (2,), sampler="ddpm", steps=4)
    module = GenerativeUncertaintyModule(compiled_adapter, str(path), num_members=2)
    graphs = []
    for i, b in enumerate(batches):
        torch.testing.assert_close(module.predict_step(b, i)["scores"]["pixel"], expected[i], rtol=1e-4, atol=1e-4)
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    module.on_predict_end()
    assert graphs[0] > 0 and graphs[1] == graphs[0] == graphs[2], graphs
