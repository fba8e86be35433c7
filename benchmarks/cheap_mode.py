"""The cheap variant's two choices of pretrained member, at equal cost, on the toy and on digits (issue 11).

With T' < T the pretrained member of the variance is either the kept sample itself (``kept``: T steps,
cost T + M·T') or the pretrained weights re-run at T' (``rerun``: cost T + (M + 1)·T'). At equal
network evaluations, ``kept`` with M + 1 drawn members is compared with ``rerun`` with M:

- toy (T = 100 DDPM, T' = 20, the `auto` posterior over 20,000 points): the AUROC of the pixel score
  for the hallucinations (points farther than 3 mode std from every mode), and their rate after the
  50% most uncertain are dropped, over the rate before (at 3 and 5 std);
- digits (T = 50 DDIM, T' = 10, the digits experiment's primary model, its posterior over `train`, the
  scorer, and the held-out evaluation of docs/digits_experiment_rules.md; keep 250 of 300): the AUROC
  of the semantic score for off-class samples, and FID and precision (classifier space) of the kept
  set against the null's random kept sets.

The kept samples are the same in every configuration (checked), so only the score differs.

Usage: python benchmarks/cheap_mode.py [--output runs/cheap_mode] [--toy-samples 20000] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from genunc_lightning.data.toy import grid_modes  # noqa: E402
from genunc_lightning.experiments import demo  # noqa: E402
from genunc_lightning.metrics.functional import auroc  # noqa: E402
from genunc_lightning.uncertainty import PixelLikelihood  # noqa: E402
from genunc_lightning.uncertainty.writer import read_shards  # noqa: E402

# (pretrained member, M) pairs of equal cost T + 2T' and T + 5T'.
CONFIGS = [("kept", 2), ("rerun", 1), ("kept", 5), ("rerun", 4)]


def toy_rows(out: Path, num_samples: int) -> list[dict]:
    sizes = demo.DemoSizes()
    adapter = demo.toy_adapter()
    posterior = demo.toy_posterior(adapter, sizes)
    modes, rows, first = grid_modes(), [], None
    for mode, members in CONFIGS:
        run_dir = out / "toy" / f"{mode}_M{members}"
        table, seconds = demo.scored_run(run_dir, adapter, posterior, [PixelLikelihood()], num_samples, 5000,
                                         num_members=members, member_steps=20, pretrained_member=mode)  # fmt: skip
        cols = read_shards(run_dir, columns=["index", "sample"])
        samples = cols["sample"][cols["index"].argsort()]
        if first is None:
            first = samples
        assert torch.equal(samples, first), "the kept samples must not depend on the scoring configuration"
        dist = torch.cdist(samples.double(), modes.double()).min(1).values
        kept = samples[demo.keep_best(table["pixel"], len(samples) // 2)]
        rates = demo.filtered_rates(samples, kept, modes, 0.1)
        rows.append({
            "part": "toy", "pretrained_member": mode, "M": members, "nfe": 100 + (members + (mode == "rerun")) * 20,
            "auroc": auroc(table["pixel"], dist > 0.3), "after_over_before_3std": rates["after_over_before"]["3std"],
            "after_over_before_5std": rates["after_over_before"]["5std"], "seconds": seconds,
        })  # fmt: skip
    return rows


def digits_rows(out: Path) -> list[dict]:
    """The digits experiment's primary model, evaluated on held-out digits as its rules fix."""
    from genunc_lightning.data import DigitsDataset
    from genunc_lightning.experiments import digits_experiment as dx
    from genunc_lightning.uncertainty import SemanticLikelihood

    evaluation = dx.HeldOutEvaluation()
    adapter = dx.digits_adapter(dx.PRIMARY_TRAINING_STEPS)
    posterior = demo.fit_posterior(adapter, DigitsDataset("train"))
    n, rows = evaluation.sizes.samples, []
    for mode, members in CONFIGS:
        run_dir = out / "digits" / f"{mode}_M{members}"
        likelihoods = [SemanticLikelihood(evaluation.scorer)]
        _, seconds = demo.scored_run(run_dir, adapter, posterior, likelihoods, n, n, num_classes=10,
                                     num_members=members, member_steps=10, pretrained_member=mode)  # fmt: skip
        table, samples = demo.load_run(run_dir)
        ev = evaluation.evaluate(samples, table["class"], {"semantic": table["semantic"]})
        space = ev["spaces"]["classifier"]
        ours, rnd = space["methods"]["semantic"], space["null"]
        rows.append({
            "part": "digits", "pretrained_member": mode, "M": members, "nfe": 50 + (members + (mode == "rerun")) * 10,
            "auroc": ev["auroc"]["off_class"]["semantic"], "fid": ours["fid"], "random_fid": rnd["fid"],
            "random_fid_std": rnd["fid_std"], "precision": ours["precision"], "random_precision": rnd["precision"],
            "off_class": ours["off_class"], "seconds": seconds,
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/cheap_mode")
    parser.add_argument("--toy-samples", type=int, default=20000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    out = Path(args.output)
    rows = toy_rows(out, args.toy_samples) + digits_rows(out)
    for r in rows:
        for key in ("after_over_before_3std", "after_over_before_5std", "fid", "random_fid", "random_fid_std",
                    "precision", "random_precision", "off_class"):  # fmt: skip
            r.setdefault(key, float("nan"))
    columns = [("part", "part", ""), ("pretrained_member", "member 0", ""), ("M", "M", ""), ("nfe", "NFE", ""),
               ("auroc", "AUROC", ".3f"), ("after_over_before_3std", "3std a/b", ".3f"),
               ("after_over_before_5std", "5std a/b", ".3f"), ("fid", "FID", ".3f"), ("random_fid", "rnd FID", ".3f"),
               ("precision", "prec", ".3f"), ("random_precision", "rnd prec", ".3f"), ("off_class", "off-class", ".4f"),
               ("seconds", "s", ".0f")]  # fmt: skip
    report("Cheap variant at equal cost: kept sample vs pretrained re-run as member 0", rows, columns, args.json)


if __name__ == "__main__":
    main()
