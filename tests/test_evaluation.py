"""`genunc evaluate`: selection maths, an end-to-end run on a predict directory, bad input."""

import json

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from scipy.stats import spearmanr

from genunc_lightning.data import GaussianGrid2D, SeedDataModule
from genunc_lightning.evaluation import (
    Evaluation,
    EvaluationError,
    class_balanced_keep,
    combined_ranks,
    keep_best,
    spearman,
)
from genunc_lightning.uncertainty import GenerativeUncertaintyModule, ScoredSampleWriter
from genunc_lightning.uncertainty.writer import read_scores, read_shards


def test_keep_best_and_rank_sums():
    values = torch.tensor([3.0, 1.0, 2.0, 5.0, 4.0])
    assert keep_best(values, 2).tolist() == [1, 2]
    assert keep_best(values, 2, higher_is_better=True).tolist() == [3, 4]
    cols = {"u": values, "realism": torch.tensor([0.0, 0.0, 9.0, 1.0, 2.0])}
    # u ranks: [2, 0, 1, 4, 3]; realism (higher better) ranks: [3, 4, 0, 2, 1]
    assert combined_ranks(cols, ["u", "realism"]).tolist() == [5, 4, 1, 6, 4]


def test_class_balanced_keep_takes_each_class_share():
    g = torch.Generator().manual_seed(0)
    classes = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    values = torch.rand(100, generator=g)
    kept = class_balanced_keep(values, classes, 45)
    assert len(kept) == len(set(kept.tolist())) == 45
    counts = torch.bincount(classes[kept], minlength=3).tolist()
    # Quotas 22.5, 13.5, 9: floors 22, 13, 9 and the one remaining place to the first tied remainder.
    assert counts == [23, 13, 9]
    for c in range(3):  # within a class, the best are kept
        members = (classes == c).nonzero().flatten()
        chosen = kept[classes[kept] == c]
        assert values[chosen].max() <= values[members].sort().values[len(chosen) - 1]


def test_spearman_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 5, (60,), generator=g).double()
    b = a + torch.randn(60, generator=g, dtype=torch.float64)
    assert spearman(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-12)


def predict_run(adapter, posterior, out_dir, num_classes=None):
    module = GenerativeUncertaintyModule(adapter, posterior, num_members=3)
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ScoredSampleWriter(str(out_dir))],
    )
    datamodule = SeedDataModule(120, 40, seed=0, num_classes=num_classes)
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    return out_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, toy_model):
    root = tmp_path_factory.mktemp("eval")
    adapter, path = toy_model(root, steps=20)
    return predict_run(adapter, str(path), root / "run")


def evaluation(run_dir, **kwargs):
    defaults = dict(reference=GaussianGrid2D(num_points=300, seed=4), keep=60, random_subsets=3,
                    fractions=[0.5, 1.0], combinations=[["pixel", "realism"]])  # fmt: skip
    defaults.update(kwargs)
    return Evaluation(str(run_dir), **defaults)


def test_end_to_end_report(run_dir, tmp_path):
    report = evaluation(run_dir, output_dir=str(tmp_path / "ev"), cache_dir=str(tmp_path / "cache")).run()
    results = report["results"]
    assert set(results) == {"all samples", "pixel", "realism", "rarity", "pixel + realism", "random"}
    assert results["pixel"]["kept"] == 60 and results["all samples"]["kept"] == 120
    assert results["random"]["subsets"] == 3
    # The random rows against a numpy brute force of improved precision (k = 3) on the same draws.
    samples = read_shards(run_dir, columns=["index", "sample"])
    fake = samples["sample"][samples["index"].argsort()].double().numpy()
    real = GaussianGrid2D(num_points=300, seed=4).points.double().numpy()
    d_real = np.sqrt(((real[:, None] - real[None]) ** 2).sum(-1))
    radii = np.sort(d_real, axis=1)[:, 3]  # the 3rd nearest other point (column 0 is the point itself)
    g = torch.Generator().manual_seed(0)
    precisions = []
    for _ in range(3):
        kept = fake[torch.randperm(120, generator=g)[:60].numpy()]
        d = np.sqrt(((kept[:, None] - real[None]) ** 2).sum(-1))
        precisions.append((d <= radii[None]).any(1).mean())
    assert results["random"]["precision"] == pytest.approx(np.mean(precisions), abs=1e-12)
    on_disk = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert on_disk["results"]["pixel"] == pytest.approx(results["pixel"])
    table = (tmp_path / "ev" / "evaluation.md").read_text()
    assert "| pixel + realism |" in table and "random (3 subsets)" in table
    for name in ("metrics_vs_fraction.png", "extremes_pixel.png", "spearman.png"):
        assert (tmp_path / "ev" / name).stat().st_size > 1000
    assert set(report["sweep"]["pixel"][0]) == {"fraction", "fid", "precision", "recall"}
    # Realism keeps the most realistic: its kept set is at least as precise as random on average.
    assert results["realism"]["precision"] >= results["random"]["precision"] - 3 * results["random"]["precision_std"]
    # The reference features were cached and are reused.
    assert len(list((tmp_path / "cache").iterdir())) == 1
    again = evaluation(run_dir, output_dir=str(tmp_path / "ev2"), cache_dir=str(tmp_path / "cache")).run()
    assert again["results"]["pixel"] == results["pixel"]


def test_cli_evaluate(run_dir, tmp_path, genunc):
    cfg = tmp_path / "ev.yaml"
    cfg.write_text(
        f"run_dir: {run_dir}\nreference:\n  class_path: genunc_lightning.data.GaussianGrid2D\n"
        "  init_args: {num_points: 200, seed: 2}\nkeep: 0.5\nrandom_subsets: 2\nfractions: [1.0]\n"
        f"output_dir: {tmp_path / 'out'}\n"
    )
    printed = genunc("evaluate", "--config", cfg, "--print_config", cwd=tmp_path)
    assert printed.returncode == 0 and "random_subsets: 2" in printed.stdout
    res = genunc("evaluate", "--config", cfg, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| pixel |" in res.stdout and (tmp_path / "out" / "evaluation.json").is_file()
    assert json.loads((tmp_path / "out" / "evaluation.json").read_text())["kept"] == 60  # half of 120
    # A count, as configs/digits/evaluate.yaml gives it (it once reached the evaluation as 1000.0).
    text = cfg.read_text().replace("keep: 0.5", "keep: 70")
    cfg.write_text(text.replace(f"output_dir: {tmp_path / 'out'}", f"output_dir: {tmp_path / 'out70'}"))
    res = genunc("evaluate", "--config", cfg, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tmp_path / "out70" / "evaluation.json").read_text())["kept"] == 70


class NaNAt3(torch.nn.Module):
    def forward(self, x):
        x = x.flatten(1).clone()
        x[3] = float("nan")
        return x


def test_bad_inputs(run_dir, tmp_path):
    with pytest.raises(EvaluationError, match="exceeds the 120 samples"):
        evaluation(run_dir, keep=500).run()
    with pytest.raises(EvaluationError, match="empty"):
        evaluation(run_dir, keep=0).run()
    with pytest.raises(ValueError, match=r"NaN or inf values \(rows \[3, 43, 83\]\)"):  # row 3 of each shard
        evaluation(run_dir, feature_extractor=NaNAt3()).run()
    with pytest.raises(ValueError, match="Feature dimensions differ"):
        evaluation(run_dir, reference=torch.utils.data.TensorDataset(torch.randn(50, 3))).run()
    with pytest.raises(ValueError, match="k = 3 needs at least 4"):
        evaluation(run_dir, reference=GaussianGrid2D(num_points=3)).run()
    with pytest.raises(EvaluationError, match="Score columns"):
        evaluation(run_dir, scores=["semantic"]).run()
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("manifest.json", "scores.csv"):
        (broken / f).write_bytes((run_dir / f).read_bytes())
    shards = sorted((run_dir / "shards").iterdir())
    (broken / "shards").mkdir()
    for s in shards[1:]:
        (broken / "shards" / s.name).write_bytes(s.read_bytes())
    lines = (broken / "scores.csv").read_text().splitlines()
    (broken / "scores.csv").write_text("\n".join(lines[:1] + lines[41:]) + "\n")
    with pytest.raises(EvaluationError, match=r"missing 40 of 120 indices \(first: \[0, 1, 2"):
        evaluation(broken).run()


class SideOfZero(torch.nn.Module):
    """A 2D 'classifier': class 1 right of x = 0, class 0 left of it."""

    def forward(self, x):
        return torch.stack([-x[:, 0], x[:, 0]], dim=1)


def test_off_class_rate_and_auroc_with_a_classifier(tmp_path, toy_model):
    from sklearn.metrics import roc_auc_score

    from genunc_lightning.adapters import GaussianDiffusionAdapter
    from genunc_lightning.laplace import DiagonalLaplacePosterior
    from genunc_lightning.models import MLPDenoiser

    torch.manual_seed(0)
    model = MLPDenoiser(hidden=32, depth=2, num_classes=2)
    adapter = GaussianDiffusionAdapter(model, "out", (2,), num_classes=2, sampler="ddim", steps=10)
    fisher = {name: torch.full_like(p, 50.0) for name, p in model.out.named_parameters()}
    posterior = DiagonalLaplacePosterior.fit(model.out, "out", fisher, 100, 50.0, 200)
    run = predict_run(adapter, posterior, tmp_path / "run", num_classes=2)

    report = evaluation(run, classifier=SideOfZero(), class_balanced=True, output_dir=str(tmp_path / "ev")).run()
    # Independent reference: the classifier's verdicts straight from the shards.
    shards = read_shards(run, columns=["index", "sample", "class"])
    order = shards["index"].argsort()
    off = (shards["sample"][order, 0] > 0).long() != shards["class"][order]
    table = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert table["results"] == report["results"] and table["off_class_auroc"] == report["off_class_auroc"]
    assert 0 < off.sum() < 120, "the test needs both kinds of samples"
    results = report["results"]
    assert results["all samples"]["off_class"] == pytest.approx(off.double().mean().item(), abs=1e-12)
    scores = read_scores(run)
    order = scores["index"].long()
    pixel = torch.empty(120, dtype=torch.float64)
    pixel[order] = scores["pixel"].double()
    kept = pixel.argsort(stable=True)[:60]
    assert results["pixel"]["off_class"] == pytest.approx(off[kept].double().mean().item(), abs=1e-12)
    assert report["off_class_auroc"]["pixel"] == pytest.approx(roc_auc_score(off.numpy(), pixel.numpy()), abs=1e-12)
    assert "off_class" in results["random"] and "off_class_std" in results["random"]
    # The oracle keeps on-class samples first: off-class only for the places the on-class ones cannot fill.
    oracle = results["oracle: on-class first"]
    assert oracle["off_class"] == pytest.approx(max(0, 60 - int((~off).sum())) / 60, abs=1e-12)
    assert oracle["subsets"] == 3 and oracle["off_class_std"] == pytest.approx(0.0, abs=1e-12)
    assert "off_class" in results["pixel (class-balanced)"]
    table_md = (tmp_path / "ev" / "evaluation.md").read_text()
    assert "| off-class ↓ |" in table_md and "AUROC (off-class)" in table_md
    assert "| oracle: on-class first (3 subsets) |" in table_md
    # An unconditional run has no class to compare with: a clear error, before anything is written.
    with pytest.raises(EvaluationError, match="120 samples of this run are unconditional"):
        evaluation(
            run_dir_unconditional(tmp_path, toy_model), classifier=SideOfZero(), output_dir=str(tmp_path / "u")
        ).run()
    assert not (tmp_path / "u").exists()


def run_dir_unconditional(tmp_path, toy_model):
    adapter, path = toy_model(tmp_path, steps=5)
    return predict_run(adapter, str(path), tmp_path / "uncond")


def test_reference_cache_tells_plain_modules_of_one_class_apart(run_dir, tmp_path):
    torch.manual_seed(0)
    first, second = torch.nn.Linear(2, 3), torch.nn.Linear(2, 3)  # one class, other weights
    cache = tmp_path / "cache"

    def all_samples(extractor, cache_dir, name):
        report = evaluation(run_dir, feature_extractor=extractor, cache_dir=cache_dir, fractions=[1.0],
                            random_subsets=0, output_dir=str(tmp_path / name)).run()  # fmt: skip
        return report["results"]["all samples"]

    all_samples(first, str(cache), "a")
    cached = all_samples(second, str(cache), "b")
    assert len(list(cache.iterdir())) == 2, "the second module must not reuse the first one's features"
    assert cached == all_samples(second, None, "c")


def test_grids_show_distinct_samples_and_small_kept_sets_warn(run_dir, tmp_path):
    from genunc_lightning.plots import best_and_worst

    for n in (10, 51, 200):
        best, worst = best_and_worst(torch.randn(n), higher_is_better=False)
        assert len(best) == len(worst) == min(25, n // 2)
        assert not set(best.tolist()) & set(worst.tolist())
    # 512-d features of a kept set of 100: the FID covariance is rank-deficient, and the report says so.
    with pytest.warns(UserWarning, match=r"feature dimension \(512\) is not well below the kept set's size \(K = 100"):
        evaluation(run_dir, feature_extractor=torch.nn.Linear(2, 512), keep=100, fractions=[1.0], random_subsets=0,
                   output_dir=str(tmp_path / "wide")).run()  # fmt: skip


def test_heldout_gives_the_floor_gate_kid_and_verdicts(run_dir, tmp_path):
    """The toy model at 20 steps against its own training distribution: the report carries the gate's numbers."""
    from genunc_lightning.evaluation.gate import verdicts

    report = evaluation(run_dir, output_dir=str(tmp_path / "ev"), random_subsets=40, kid_subsets=3, floor_draws=30,
                        heldout=GaussianGrid2D(num_points=400, seed=9)).run()  # fmt: skip
    floor = report["floor"]
    assert (floor["reference_size"], floor["kept_size"], floor["subsets"]) == (300, 60, 30)
    assert all("kid" in r for r in report["results"].values())
    # a 20-step toy model is far from its data on FID and KID: both can test claims
    assert report["gate"]["fid"]["informative"] and report["gate"]["kid"]["informative"]
    assert report["gate"]["fid"]["null"] > max(floor["values"]["fid"])
    methods = ["pixel", "realism", "rarity", "pixel + realism"]
    assert {v["method"] for v in report["verdicts"]} == set(methods) and len(report["verdicts"]) == 3 * len(methods)
    on_disk = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert on_disk["verdicts"] == report["verdicts"]
    assert "| metric | floor (real vs real) |" in (tmp_path / "ev" / "evaluation.md").read_text()
    # the verdicts are the gate's on the numbers on disk
    space = {"floor": on_disk["floor"], "null": on_disk["null"], "methods": {m: on_disk["results"][m] for m in methods}}
    assert verdicts({"features": space}) == report["verdicts"]
    # inputs that cannot give verdicts are refused before any work (no feature is extracted), and nothing is written
    extractor = CountingIdentity()
    with pytest.raises(EvaluationError, match="random kept sets"):
        evaluation(run_dir, output_dir=str(tmp_path / "ev2"), feature_extractor=extractor,
                   heldout=GaussianGrid2D(num_points=400, seed=9)).run()  # fmt: skip
    with pytest.raises(EvaluationError, match="hold out more data"):
        evaluation(run_dir, output_dir=str(tmp_path / "ev3"), random_subsets=20, feature_extractor=extractor,
                   heldout=GaussianGrid2D(num_points=50, seed=9)).run()  # fmt: skip
    assert extractor.calls == 0
    assert not (tmp_path / "ev2").exists() and not (tmp_path / "ev3").exists()


class CountingIdentity(torch.nn.Module):
    """The identity as a feature extractor, counting its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.flatten(1)


def test_reject_thresholds_from_a_labels_file(run_dir, tmp_path):
    from genunc_lightning.evaluation.decision import reject_threshold

    table = read_scores(run_dir)
    labelled = torch.arange(80)  # the first 80 samples were looked at; failures: the most pixel-uncertain
    failed = table["pixel"][labelled] > table["pixel"][labelled].quantile(0.8)
    labels = tmp_path / "labels.csv"
    labels.write_text("index,failure\n" + "".join(f"{i},{int(f)}\n" for i, f in zip(labelled.tolist(), failed.tolist(),
                                                                                   strict=True)))  # fmt: skip
    report = evaluation(run_dir, output_dir=str(tmp_path / "ev"), labels=str(labels), alpha=0.1, delta=0.2).run()
    ours = report["reject_thresholds"]["pixel"]
    direct = reject_threshold(table["pixel"][labelled], failed, 0.1, 0.2)
    assert ours["threshold"] == direct["threshold"] and ours["tests"] == direct["tests"] and ours["threshold"]
    assert ours["others"] == 40 and ours["others_rejected"] == int((table["pixel"][80:] > ours["threshold"]).sum())
    assert report["reject_thresholds"]["realism"]["keep"] == "realism >= threshold"  # higher realism is kept
    assert "Reject thresholds from 80 labelled samples" in (tmp_path / "ev" / "evaluation.md").read_text()


BAD_LABELS = [("index,label\n0,1\n", "needs a header with the columns index and failure"),
              ("index,failure\n0,yes\n", "line 2: failure 'yes' is not 0 or 1"),
              ("index,failure\n999,1\n", "line 2: index '999' is not a sample"),
              ("index,failure\n3,1\n3,0\n", "labels some index more than once")]  # fmt: skip


@pytest.mark.parametrize(("text", "match"), BAD_LABELS)
def test_a_bad_labels_file_is_one_line_before_any_feature_work(run_dir, tmp_path, text, match):
    labels = tmp_path / "labels.csv"
    labels.write_text(text)
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            calls.append(1)
            return x

    with pytest.raises(EvaluationError, match=match):
        evaluation(run_dir, labels=str(labels), feature_extractor=Counting()).run()
    assert calls == []


def test_a_run_without_samples_is_refused_with_its_own_fix(tmp_path, toy_model):

    adapter, path = toy_model(tmp_path)
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[ScoredSampleWriter(str(tmp_path / "run"), save_samples=False)]).predict(
        GenerativeUncertaintyModule(adapter, str(path), num_members=2), datamodule=SeedDataModule(20, 10),
        return_predictions=False)  # fmt: skip
    with pytest.raises(EvaluationError, match="written with save_samples=false.*writer.save_samples true"):
        evaluation(tmp_path / "run", keep=10).run()
