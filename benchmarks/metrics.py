"""Precision/recall at scale: ours (chunked k-NN) against torch-fidelity's ``prc`` on the same features.

For each N in --sizes, draws N real and N fake 512-d features and times precision and recall in a
fresh subprocess per implementation, reporting wall time and peak memory (CPU: max RSS of the
process; CUDA: peak allocated). torch-fidelity runs with ``save_cpu_ram`` off (its default, the full
N x N distance matrices) where they fit in memory and on (its chunked path) otherwise.
Target (issue 4): no slower than torch-fidelity, and at most 4 GiB peak at 50K.

Usage: python benchmarks/metrics.py [--sizes 10000 50000] [--device cpu|cuda] [--impls ours fidelity]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


# Both implementations are imported before timing, in every child, so import time is never counted.
def run_one(impl: str, n: int, dim: int, device: str) -> dict:
    from torch_fidelity.metric_prc import prc_features_to_metric

    from genunc_lightning.metrics import precision_recall

    g = torch.Generator().manual_seed(0)
    real = torch.randn(n, dim, generator=g).to(device)
    fake = (1.1 * torch.randn(n, dim, generator=g) + 0.05).to(device)
    if device == "cuda":  # exclude context start-up and kernel loading from both timings
        torch.cdist(real[:64], fake[:64]).topk(4, dim=1, largest=False)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if impl == "ours":
        p, r = precision_recall(real, fake, k=3)
        p, r = p.item(), r.item()
    else:
        # The full path holds three N x N float32 matrices on the CPU.
        save_ram = 3 * n * n * 4 > 12 * 2**30
        out = prc_features_to_metric(
            fake, real, prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=save_ram, verbose=False
        )
        p, r = out["precision"], out["recall"]
        impl = f"fidelity ({'save_cpu_ram' if save_ram else 'full'})"
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = {
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "rss_growth_gib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 2**20,
    }
    if device == "cuda":
        peak["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return {"impl": impl, "n": n, "dim": dim, "device": device, "seconds": seconds, "precision": p, "recall": r, **peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--impls", nargs="+", default=["ours", "fidelity"])
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child[0], int(args.child[1]), args.dim, args.device)))
        return
    rows = []
    for n in args.sizes:
        for impl in args.impls:
            cmd = [sys.executable, __file__, "--child", impl, str(n), "--dim", str(args.dim), "--device", args.device]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                rows.append({"impl": impl, "n": n, "error": res.stderr.strip().splitlines()[-1:]})
            else:
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
