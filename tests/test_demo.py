"""`genunc demo`: the report's structure on a quick run."""

import json

import numpy as np
import pytest

from genunc_lightning.evaluation.gate import FAILS, HOLDS, UNINFORMATIVE, verdicts
from genunc_lightning.experiments.demo import PAPER_DIGITS, PAPER_TOY, main


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    report = main(["--quick", "--output", str(out)])
    return out, report


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the demo at its real size: minutes on a slow 2-core machine
def test_report_json_holds_every_section_of_report_md(quick_report):
    out, report = quick_report
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["sizes"] == report["sizes"]
    toy = on_disk["toy"]["methods"]
    assert set(toy) == {"ensemble (5 members)", "laplace (auto)", PAPER_TOY}
    for rates in toy.values():
        assert set(rates["before"]) == set(rates["after"]) == {"3std", "4std", "5std"}
    digits = on_disk["digits"]
    primary = digits["primary"]
    assert set(primary["spaces"]) == {"classifier", "pixel-pca"}
    expected = {"semantic", "semantic_paper", "pixel", "bayesdiff", "au", "realism", "rarity", "semantic + realism"}
    for space in primary["spaces"].values():
        assert expected <= set(space["methods"])
        assert set(space["gate"]) == {"fid", "kid", "precision"}
        floor = space["floor"]
        assert (floor["kept_size"], floor["reference_size"]) == (50, 200) and "fixed reference" in floor["split"]
        assert len(floor["values"]["kid"]) == floor["subsets"] == 20
        assert len(space["null"]["values"]["fid"]) == 20
        for measured in space["methods"].values():
            assert {"fid", "kid", "precision", "recall", "off_class", "off_manifold"} <= set(measured)
    assert 0.8 < primary["accuracy"]["scorer"] <= 1 and 0.8 < primary["accuracy"]["evaluator"] <= 1
    assert set(primary["auroc"]) == {"off_class", "off_manifold"}
    # the verdicts are the gate's, recomputed from the numbers on disk
    assert verdicts(primary["spaces"]) == primary["verdicts"]
    digits_claims = [c for c in on_disk["claims"] if c["claim"].startswith("digits, ")]
    assert len(digits_claims) == 12 + 4  # ours and the paper preset x FID, KID, precision x two spaces; replicated
    # the replicated verdicts: the committed results', recomputed against the shipped snapshots
    committed = json.loads(open("docs/replication_results.json").read())
    assert on_disk["replication"]["primary"] == committed["primary"] and on_disk["replication"]["pools"] == 16
    replicated = [c for c in digits_claims if "replicated across 8 models" in c["claim"]]
    assert [c["verdict"] for c in replicated] == [t["verdict"] for t in committed["primary"]["tests"].values()]
    assert {c["verdict"] for c in on_disk["claims"]} <= {HOLDS, FAILS, UNINFORMATIVE}
    assert set(digits["cost_sweep"]) == {"M=5, T'=T", "M=1, T'=T", "M=1, T'=T/5", "M=5, T'=T/5"}
    assert set(digits["scale_sweep"]) == {"auto (T = 1)", PAPER_DIGITS, "auto, T = 10"}
    paper = digits["scale_sweep"][PAPER_DIGITS]
    assert (paper["sigma"], paper["prior_precision"]) == (1.0, 1.0)
    text = (out / "report.md").read_text()
    assert (
        "## Claims checked" in text
        and "### The gate" in text
        and "off-manifold" in text
        and "KID ↓ (MMD², raw features)" in text
        and "## Replicated across 8 models" in text
    )
    for name in list(toy) + list(digits["cost_sweep"]) + list(digits["scale_sweep"]):
        assert name in text
    assert digits["sweep_figure"] in text
    assert (out / "toy_figure2.png").is_file()
    for grid in digits["grids"].values():
        assert (out / grid).is_file()


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the demo at its real size: minutes on a slow 2-core machine
def test_toy_claim_on_a_smaller_run(tmp_path):
    """Paper §4.1: dropping the 50% most uncertain removes the hallucinations between modes.

    Issue target, checked on 10K samples instead of the demo's 20K (the posterior is fitted as in
    the demo, on 20K points): at 5 std, the rate after filtering is at most 20% of the rate before,
    for the ensemble and for the `auto` Laplace posterior.
    """
    from genunc_lightning.experiments.demo import TOY_METHODS, DemoSizes, run_toy

    checked = TOY_METHODS[:2]  # the ensemble and `auto`; the paper preset's run is left out: not a claim
    with pytest.raises(ValueError, match="Unknown toy methods"):
        run_toy(tmp_path, DemoSizes(), methods=["laplace"])
    toy = run_toy(tmp_path, DemoSizes(toy_samples=10000, toy_fit_points=20000), methods=checked)
    assert set(toy["methods"]) == set(checked)
    for name in checked:
        rates = toy["methods"][name]
        assert rates["before"]["5std"] > 0, "no hallucinations to remove: the check would be empty"
        assert rates["after"]["5std"] <= 0.2 * rates["before"]["5std"], (name, rates)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_digits_primary_setting_at_full_size_passes_the_gate_that_chose_it(tmp_path):
    """The demo's digits model is the one the rule (docs/digits_experiment_rules.md §10) picks from the sweep.

    At the full sizes (300 samples, keep 250, 200 null kept sets, 200 floor draws) its random kept sets
    are worse on FID than the real-vs-real floor's 0.99 quantile in both feature spaces, so the demo's
    FID verdicts are tests, not 'uninformative'. The gate reads the samples only, so a cheap score (one
    one-step member) draws the demo's samples here.
    """
    from genunc_lightning.data import DigitsDataset
    from genunc_lightning.evaluation import load_run
    from genunc_lightning.evaluation.gate import verdicts
    from genunc_lightning.experiments.digits_experiment import (
        PRIMARY_SAMPLER_STEPS,
        PRIMARY_TRAINING_STEPS,
        HeldOutEvaluation,
        digits_adapter,
    )
    from genunc_lightning.experiments.runs import fit_posterior, scored_run
    from genunc_lightning.uncertainty import PixelLikelihood

    evaluation = HeldOutEvaluation()
    adapter = digits_adapter(PRIMARY_TRAINING_STEPS, PRIMARY_SAMPLER_STEPS)
    n = evaluation.sizes.samples
    scored_run(tmp_path, adapter, fit_posterior(adapter, DigitsDataset("train")), [PixelLikelihood()], n, n,
               num_classes=10, num_members=1, member_steps=1)  # fmt: skip
    table, samples = load_run(tmp_path)
    report = evaluation.evaluate(samples, table["class"], {"pixel": table["pixel"]})
    for name, space in report["spaces"].items():
        assert space["gate"]["fid"]["informative"], (name, space["gate"]["fid"])
    assert verdicts(report["spaces"]) == report["verdicts"]
    assert report["accuracy"]["scorer"] > 0.9 and report["accuracy"]["evaluator"] > 0.9
    for space in report["spaces"].values():  # the gate is the floor's 0.99 quantile (numpy's), the null beyond it
        threshold = np.quantile(space["floor"]["values"]["fid"], 0.99)
        assert (
            space["gate"]["fid"]["threshold"] == pytest.approx(threshold) and space["gate"]["fid"]["null"] > threshold
        )
