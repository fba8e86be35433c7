"""`make experiments`: the digits sweep's machinery on a small run, and the rule that picks the demo's model."""

import json

import pytest

from genunc_lightning.evaluation.gate import verdicts
from genunc_lightning.experiments.sweep import markdown, primary_training_steps, run_sweep


def _point(training_steps, sampler_steps, informative):
    names = ("classifier", "pixel-pca")
    spaces = {name: {"gate": {"fid": {"informative": flag}}} for name, flag in zip(names, informative, strict=True)}
    return {"training_steps": training_steps, "sampler_steps": sampler_steps, "spaces": spaces}


def test_primary_setting_rule_reads_the_gate_only():
    points = [_point(150, 50, (True, True)), _point(600, 50, (True, True)), _point(1500, 50, (True, False)),
              _point(6000, 10, (True, True)), _point(6000, 50, (False, False))]  # fmt: skip
    assert primary_training_steps(points) == 600  # the largest S at T = 50 informative in both spaces
    assert primary_training_steps([_point(300, 50, (False, True)), _point(150, 50, (False, False))]) == 150


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_small_sweep_writes_its_report_figure_and_trend_tests(tmp_path):
    from genunc_lightning.experiments.demo import QUICK_EXPERIMENT

    report = run_sweep(tmp_path, QUICK_EXPERIMENT, training_steps=(150, 6000), sampler_steps=(5,))
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert [(p["training_steps"], p["sampler_steps"]) for p in on_disk["points"]] == [(150, 5), (6000, 5)]
    for point in on_disk["points"]:
        assert verdicts(point["spaces"]) == point["verdicts"]  # computed from the numbers on disk
        assert point["accuracy"]["evaluator"] > 0.8
    trend = on_disk["trends"]["semantic | fid | classifier"]["trend"]
    assert trend["points"] == 2 and abs(trend["rho"]) == pytest.approx(1.0)  # two points: perfectly ranked
    assert (tmp_path / "gain_vs_floor.png").stat().st_size > 10000
    text = (tmp_path / "report.md").read_text()
    assert text == markdown(report) and "| 6000 | 5 |" in text
