"""`genunc demo`: the report's structure on a quick run."""

import json

import pytest

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
    expected = {"all samples", "semantic", "pixel", "bayesdiff", "au", "realism", "rarity", "semantic + realism",
                "random"}  # fmt: skip
    assert expected <= set(digits["main"])
    assert any(k.endswith("(class-balanced)") for k in digits["main"])
    assert all("off_class" in r for r in digits["main"].values())
    assert set(digits["off_class_auroc"]) == {"semantic", "pixel", "bayesdiff", "au", "realism", "rarity"}
    assert set(digits["cost_sweep"]) == {"M=5, T'=T", "M=1, T'=T", "M=1, T'=T/5", "M=5, T'=T/5"}
    assert len(digits["scale_sweep"]) == 6 and PAPER_DIGITS in digits["scale_sweep"]
    paper = digits["scale_sweep"][PAPER_DIGITS]
    assert (paper["sigma"], paper["prior_precision"]) == (1.0, 1.0)
    assert len(on_disk["claims"]) == 4 and all(set(c) == {"claim", "measured", "holds"} for c in on_disk["claims"])
    text = (out / "report.md").read_text()
    assert "## Claims checked" in text and "AUROC (off-class)" in text and "off-class ↓" in text
    for name in list(toy) + list(digits["cost_sweep"]) + list(digits["scale_sweep"]):
        assert name in text
    for figure in ("toy_figure2.png", "digits/main/evaluation/metrics_vs_fraction.png"):
        assert (out / figure).is_file()


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the demo at its real size: minutes on a slow 2-core machine
def test_toy_claim_on_a_smaller_run(tmp_path):
    """Paper §4.1: dropping the 50% most uncertain removes the hallucinations between modes.

    Issue target, checked on 10K samples instead of the demo's 50K (the posterior is fitted as in
    the demo, on 20K points): at 5 std, the rate after filtering is at most 20% of the rate before,
    for the ensemble and for the `auto` Laplace posterior.
    """
    from genunc_lightning.experiments.demo import DemoSizes, run_toy

    toy = run_toy(tmp_path, DemoSizes(toy_samples=10000, toy_fit_points=20000))
    for name in ("ensemble (5 members)", "laplace (auto)"):
        rates = toy["methods"][name]
        assert rates["before"]["5std"] > 0, "no hallucinations to remove: the check would be empty"
        assert rates["after"]["5std"] <= 0.2 * rates["before"]["5std"], (name, rates)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the demo at its real size: minutes on a slow 2-core machine
def test_digits_claims_that_hold_on_the_shipped_model(tmp_path):
    """Paper §4.2-4.3 on the shipped digits model, ours alone at the demo's size (1,200 samples, keep 1,000).

    Checked: precision of our kept set above random (by more than 2 std), fewer off-class samples
    kept than generated, and an AUROC for finding them above chance. The FID claim does not hold at
    this scale (README: 'What `make demo` shows'), so it is reported by the demo, not asserted here.
    """
    from genunc_lightning.experiments.demo import DemoSizes, digits_setup

    setup = digits_setup(DemoSizes())
    setup.scored_run(tmp_path / "run")
    report = setup.evaluate(tmp_path / "run", scores=["semantic"], combinations=[], fractions=[1.0])
    ours, rnd, everything = (report["results"][k] for k in ("semantic", "random", "all samples"))
    assert ours["precision"] > rnd["precision"] + 2 * rnd["precision_std"], (ours, rnd)
    assert ours["off_class"] < everything["off_class"], (ours, everything)
    assert report["off_class_auroc"]["semantic"] > 0.6, report["off_class_auroc"]
