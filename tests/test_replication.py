"""The replicated experiment's verdicts from pool numbers (docs/replication_rules.md §3–§5, issue 23)."""

import json
from pathlib import Path

import pytest
import torch

from genunc_lightning.experiments.replication import analyse, endpoints, reject_threshold_check, replication_markdown

SCORES = ("semantic", "semantic_relative", "pixel", "pixel_relative", "bayesdiff", "au", "realism")


def pool(fid_by_score, null_fid=30.0, informative=True):
    """A pool as evaluate_pool reports it, with the given kept-set FIDs (other metrics at the null's value)."""
    methods = {s: {"fid": fid, "kid": 1.0, "precision": 0.7, "recall": 0.5} for s, fid in fid_by_score.items()}
    space = {"methods": methods, "null_mean": {"fid": null_fid, "kid": 1.0, "precision": 0.7, "recall": 0.5},
             "gate": {"informative": informative, "null_fid": null_fid, "floor_fid_quantile": 10.0},
             "verdicts": {s: {"fid": {"p": 0.5, "gain": 0.0}} for s in methods}}  # fmt: skip
    g = torch.Generator().manual_seed(int(sum(fid_by_score.values()) * 1000))
    scores = torch.rand(300, generator=g)  # failures among the most uncertain: a threshold exists
    return {"spaces": {"classifier": space, "pixel-pca": space},
            "auroc": {f: {s: 0.5 for s in methods} for f in ("off_class", "off_manifold")},
            "columns": {s: scores.tolist() for s in methods},
            "off_class": (torch.rand(300, generator=g) < scores**4).tolist()}  # fmt: skip


def models(gains, informative=True, seed=0):
    """8 models × 2 pools; ours' kept FID is the null's minus gains[r] (± pool noise), the others at the null."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for r, gain in enumerate(gains, start=1):
        noise = torch.randn(2, generator=g).tolist()
        out[r] = [pool({**{s: 30.0 + 0.1 * n for s in SCORES}, "semantic": 30.0 - gain + 0.1 * n},
                       informative=informative) for n in noise]  # fmt: skip
    return out


def test_an_informative_case_where_ours_beats_random_and_every_rival():
    result = analyse(models([2.0, 1.5, 2.5, 1.0, 3.0, 2.2, 1.8, 2.6]))
    assert endpoints(models([2.0] * 8), "semantic")[0] == pytest.approx(2.0, abs=0.2)
    tests = result["primary"]["tests"]
    assert all(t["p"] == 1 / 256 for t in tests.values())  # every model positive: the smallest exact p
    assert all(t["p_holm"] == pytest.approx(4 / 256) and t["verdict"] == "holds" for t in tests.values())
    assert result["exploratory"]["readme claims"]["pixel beats ours (classifier FID)"]["holds"] is False


def test_an_uninformative_case_gives_no_verdict_whatever_the_gains():
    result = analyse(models([2.0] * 8, informative=False))
    assert result["primary"]["gate"] == {"informative_pools": 0, "pools": 16, "informative": False}
    assert {t["verdict"] for t in result["primary"]["tests"].values()} == {"uninformative at this scale"}


def test_no_effect_does_not_hold_and_worse_than_random_is_its_own_direction():
    result = analyse(models([0.5, -0.4, 0.1, -0.6, 0.3, -0.2, -0.1, 0.2]))
    assert result["primary"]["tests"]["random"]["verdict"] == "does not hold"
    worse = analyse(models([-2.0, -1.5, -2.5, -1.0, -3.0, -2.2, -1.8, -2.6]))
    assert worse["primary"]["tests"]["random"]["verdict"] == "does not hold"
    claim = worse["exploratory"]["readme claims"]["semantic makes FID worse than random (classifier)"]
    assert claim["p"] == 1 / 256 and claim["holds"]
    assert worse["noise_default"]["default"] == "relative"  # relative sits at the null, raw is worse: §6's rule


def test_the_results_markdown_shows_the_computed_verdicts_and_the_threshold_check():
    pools = models([2.0, 1.5, 2.5, 1.0, 3.0, 2.2, 1.8, 2.6])
    results = {"rules": "docs/replication_rules.md", "models": list(pools), "pools": [1, 2],
               "sizes": {"samples": 300, "keep": 250, "null_sets": 2000, "gate_quantile": 0.99},
               **analyse(pools), "reject_threshold": reject_threshold_check(pools),
               "seconds": {"total": 60.0}}  # fmt: skip
    text = replication_markdown(results)
    row = next(line for line in text.splitlines() if line.startswith("| ours beats random (classifier FID) |"))
    assert row.endswith("| 0.0039 | 0.0156 | holds |")  # p = 1/256, Holm × 4
    checked = results["reject_threshold"]["scores"]["semantic"]
    assert checked["models_with_threshold"] == 8 and 0 <= checked["held"] <= 8
    assert all(0 < row["fresh_kept"] < 1 for row in checked["per_model"])


def test_the_readme_quotes_the_committed_replication_results():
    import json
    from pathlib import Path

    from genunc_lightning.experiments.replication import noise_default_sentence, primary_rows

    root = Path(__file__).resolve().parents[1]
    results = json.loads((root / "docs" / "replication_results.json").read_text())
    readme = (root / "README.md").read_text()
    for row in primary_rows(results):
        assert row in readme, row
    flat = " ".join(readme.split())  # the README wraps its lines
    assert " ".join(noise_default_sentence(results).split()) in flat
    # The prose figures of the README's replication block, each from the file.
    tests, ends = results["primary"]["tests"], results["primary"]["endpoints"]
    mean = {name: sum(v) / len(v) for name, v in ends.items()}
    ours, pixel_claim = tests["random"], results["exploratory"]["readme claims"]["pixel beats ours (classifier FID)"]
    floor = results["floors"]["classifier"]
    threshold = results["reject_threshold"]["scores"]["semantic"]
    quoted = [
        f"Ours beats random kept sets in {sum(v > 0 for v in ours['per_model'])} of 8 models (mean FID gain "
        f"{ours['mean']:+.2f})",
        f"p = {ours['p']:.3f}, Holm p = {ours['p_holm']:.3f}",
        f"(gain {mean['pixel']:+.2f} against {mean['semantic']:+.2f};",
        f"sign-flip p = {pixel_claim['p']:.4f}, Benjamini–Hochberg p = {pixel_claim['p_bh']:.3f})",
        f"({mean['bayesdiff']:+.2f})",
        f"(gain {mean['pixel_relative']:+.2f} against {mean['pixel']:+.2f}",
        f"FID {floor['fixed_reference']['mean']:.2f} ± {floor['fixed_reference']['std']:.2f}, quantile "
        f"{floor['fixed_reference_quantile']:.2f}",
        f"a threshold existed in {threshold['models_with_threshold']} of 8 models",
        f"at most 0.2 in {threshold['held']} of {threshold['models_with_threshold']}",
        f"All {results['primary']['gate']['informative_pools']} pools pass the gate",
        "Only AU makes FID worse than random (BH p = "
        f"{results['exploratory']['readme claims']['au makes FID worse than random (classifier)']['p_bh']:.3f})",
    ]
    for text in quoted:
        assert " ".join(text.split()) in flat, text
    assert (root / "docs" / "replication.md").read_text() == replication_markdown(results)  # written from the file


def test_the_replicated_verdicts_rest_on_the_shipped_snapshots(tmp_path):
    """check_results: every snapshot's SHA-256 is the shipped file's, and every test recomputes as recorded."""
    import shutil

    from genunc_lightning.experiments.assets import ASSET_DIR
    from genunc_lightning.experiments.replication import check_results

    results = json.loads(Path("docs/replication_results.json").read_text())
    checked = check_results(results)
    assert checked["primary"] == results["primary"] and (checked["snapshots"], checked["pools"]) == (8, 16)
    # another file under a snapshot's name: refused, naming it
    assets = tmp_path / "assets"
    assets.mkdir()
    for snapshot in results["snapshots"].values():
        shutil.copy(ASSET_DIR / snapshot["file"], assets)
    assert check_results(results, assets)["primary"] == results["primary"]
    damaged = assets / results["snapshots"]["3"]["file"]
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 1
    damaged.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match=f"{damaged.name} is not the snapshot"):
        check_results(results, assets)
    damaged.unlink()
    with pytest.raises(RuntimeError, match="is missing"):
        check_results(results, assets)
    # a pool's number edited by hand: the recomputed test differs from the recorded one
    edited = json.loads(json.dumps(results))
    edited["per_pool"]["1"][0]["spaces"]["classifier"]["methods"]["semantic"]["fid"] += 5.0
    with pytest.raises(RuntimeError, match="primary"):
        check_results(edited)
