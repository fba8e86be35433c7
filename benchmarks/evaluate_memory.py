"""Peak memory of `genunc evaluate` on a run of the paper's scale: 50,000 samples of 3×256×256 (issue 20).

A synthetic run directory (random samples through the real ``ScoredSampleWriter``: 39 GB of float32
shards) is evaluated against a reference set generated on the fly, with a pooled-pixel feature
extractor (3×4×4 = 48 features), so the figure is about how evaluate holds samples, not about the cost
of a big network. The peak resident set size of the process is read from /proc/self/status (VmHWM)
after resetting it (``clear_refs``), once the run is written.

    python benchmarks/evaluate_memory.py --dir /tmp/genunc-50k --json benchmarks/results/evaluate_memory_cpu.json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import describe_device, write_synthetic_run  # noqa: E402
from genunc_lightning.evaluation import Evaluation  # noqa: E402


class PooledPixels(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


class RandomImages(torch.utils.data.Dataset):
    """Reference images drawn from each index's own seed, never all in memory."""

    def __init__(self, n: int, shape: tuple[int, ...]) -> None:
        self.n, self.shape = n, shape

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.rand(self.shape, generator=torch.Generator().manual_seed(10**6 + i))


def rss_mib(field: str) -> float:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--shape", type=int, nargs="+", default=[3, 256, 256])
    parser.add_argument("--batch", type=int, default=64, help="samples per shard")
    parser.add_argument("--reference", type=int, default=5_000)
    parser.add_argument("--dir", default="/tmp/genunc-evaluate-memory")
    parser.add_argument("--keep-run", action="store_true", help="leave the run directory on disk")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    shape = tuple(args.shape)
    run = Path(args.dir) / "run"
    shutil.rmtree(args.dir, ignore_errors=True)

    start = time.perf_counter()
    write_synthetic_run(run, args.samples, shape, args.batch)
    write_seconds = time.perf_counter() - start
    on_disk = sum(p.stat().st_size for p in (run / "shards").iterdir()) / 2**30

    evaluation = Evaluation(str(run), RandomImages(args.reference, shape), PooledPixels(), random_subsets=2,
                            fractions=[1.0], combinations=[])  # fmt: skip
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    before = rss_mib("VmRSS")
    start = time.perf_counter()
    report = evaluation.run()
    seconds = time.perf_counter() - start
    peak = rss_mib("VmHWM")
    row = {
        "samples": args.samples,
        "shape": list(shape),
        "shards": len(list((run / "shards").iterdir())),
        "samples_on_disk_gib": round(on_disk, 2),
        "reference": args.reference,
        "features": 3 * 4 * 4,
        "write_seconds": round(write_seconds, 1),
        "evaluate_seconds": round(seconds, 1),
        "rss_before_evaluate_mib": round(before),
        "peak_rss_during_evaluate_mib": round(peak),
        "growth_mib": round(peak - before),
        "kept": report["kept"],
        "device": describe_device(torch.device("cpu")),
    }
    print(json.dumps(row, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
    if not args.keep_run:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
