"""How much a scores table depends on the batch size (issue 14): float32 kernels round differently per batch shape.

Runs the shipped toy model (DDPM, T = 100, M = 5, pixel score, the demo's `auto` posterior) on the
same samples at several batch sizes, in one process, and reports the largest difference of the
kept samples and the largest relative difference of the scores against the first batch size.
Equal batch sizes give bit-identical tables (also after a resume; see tests/test_predict.py).

Usage: python benchmarks/batch_invariance.py [--samples 2000] [--batches 500 10 7] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_device, report  # noqa: E402

from genunc_lightning.experiments import demo  # noqa: E402
from genunc_lightning.uncertainty import PixelLikelihood  # noqa: E402
from genunc_lightning.uncertainty.writer import read_shards  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--batches", type=int, nargs="+", default=[500, 10, 7])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    adapter = demo.toy_adapter()
    posterior = demo.toy_posterior(adapter, demo.DemoSizes())
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for batch in args.batches:
            run_dir = Path(tmp) / f"b{batch}"
            table, _ = demo.scored_run(run_dir, adapter, posterior, [PixelLikelihood()], args.samples, batch)
            cols = read_shards(run_dir, columns=["index", "sample"])
            runs[batch] = (table["pixel"], cols["sample"][cols["index"].argsort()])
    ref_scores, ref_samples = runs[args.batches[0]]
    rows = []
    for batch, (scores, samples) in runs.items():
        rows.append({
            "device": describe_device(torch.device("cpu")), "batch": batch, "reference_batch": args.batches[0],
            "samples": args.samples, "max_sample_abs_diff": (samples - ref_samples).abs().max().item(),
            "max_score_rel_diff": ((scores - ref_scores).abs() / ref_scores.abs()).max().item(),
            "max_score_abs_diff": (scores - ref_scores).abs().max().item(),
        })  # fmt: skip
    columns = [("batch", "batch", ""), ("reference_batch", "vs batch", ""),
               ("max_sample_abs_diff", "sample |d|", ".2e"), ("max_score_abs_diff", "score |d|", ".2e"),
               ("max_score_rel_diff", "score rel", ".2e")]  # fmt: skip
    report(f"Toy, T = 100, M = 5, {args.samples} samples, {rows[0]['device']}", rows, columns, args.json)


if __name__ == "__main__":
    main()
