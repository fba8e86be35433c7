"""Cost of the Fisher pass against a no-grad forward, a training step and whole-model torch.func.

Prints, at the same batch: a no-grad forward of the denoiser; our Fisher pass
(``genunc_lightning.laplace.fisher_batch``: backbone without a graph, per-example gradients of the
last layer only), with the default unfold path for Conv2d and with the generic vmap path; one full
training step (forward, backward, AdamW); and per-example gradients of the whole model with
torch.func (vmap of grad over functional_call, the public reference code's approach).
Targets (issue 2): ours <= 1.2x the no-grad forward and >= 2x faster than torch.func.

Usage: python benchmarks/fisher.py [--device cuda] [--sizes small adm128] [--batch N] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.func import functional_call, grad, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SIZES, describe_device, median_seconds, report  # noqa: E402

from genunc_lightning.adapters import GaussianDiffusionAdapter  # noqa: E402
from genunc_lightning.laplace import fisher_batch  # noqa: E402
from genunc_lightning.models import SmallUNet  # noqa: E402
from genunc_lightning.seeding import example_seeds  # noqa: E402


def bench(size: str, device: torch.device, batch: int | None, repeats: int) -> dict:
    cfg = SIZES[size]
    batch = batch or cfg["batch"]
    torch.manual_seed(0)
    model = SmallUNet(**cfg["unet"]).to(device)
    adapter = GaussianDiffusionAdapter(model, "out.2", cfg["shape"], output_channels=3).to(device)
    x0 = torch.randn(batch, *cfg["shape"], device=device)
    seeds = example_seeds(0, range(batch))
    t = torch.randint(0, 1000, (batch,), device=device)
    eps = torch.randn_like(x0)
    xt = x0 + eps
    params = {k: v.detach() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    @torch.no_grad()
    def forward() -> None:
        model(xt, t.float())

    def ours() -> None:
        fisher_batch(adapter, x0, [seeds])

    def ours_vmap() -> None:
        fisher_batch(adapter, x0, [seeds], per_example_method="vmap")

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        adapter.loss(x0, seeds).mean().backward()
        opt.step()

    def loss_one(p, x, tt, e):
        out = functional_call(model, p, (x[None], tt[None].float()))[:, :3]
        return 0.5 * (out - e[None]).pow(2).sum()

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0, 0))

    def torch_func() -> None:
        g = per_example(params, xt, t, eps)
        torch.stack([g["out.2.weight"].pow(2).sum(0).sum(), g["out.2.bias"].pow(2).sum(0).sum()])

    row = {
        "size": size,
        "device": describe_device(device),
        "batch": batch,
        "params": sum(p.numel() for p in model.parameters()),
        "last_layer_params": sum(p.numel() for p in model.out[2].parameters()),
    }
    steps = [
        ("forward_no_grad", forward),
        ("ours_fisher", ours),
        ("ours_fisher_vmap", ours_vmap),
        ("train_step", train_step),
    ]
    for name, fn in steps:
        row[name] = median_seconds(fn, device, repeats)
    try:
        row["torch_func_full"] = median_seconds(torch_func, device, max(3, repeats // 2), warmup=1)
    except torch.OutOfMemoryError:
        row["torch_func_full"] = float("nan")
        torch.cuda.empty_cache()
    row["ours_over_forward"] = row["ours_fisher"] / row["forward_no_grad"]
    row["torch_func_over_ours"] = row["torch_func_full"] / row["ours_fisher"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", nargs="+", default=None, choices=sorted(SIZES))
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = args.sizes or (["small", "adm128"] if device.type == "cuda" else ["small"])
    rows = [bench(s, device, args.batch, args.repeats) for s in sizes]
    columns = [("size", "model", ""), ("batch", "batch", ""), ("params", "params", ","),
               ("forward_no_grad", "fwd no-grad", ".4f"), ("ours_fisher", "ours", ".4f"),
               ("ours_fisher_vmap", "ours vmap", ".4f"), ("train_step", "train step", ".4f"),
               ("torch_func_full", "torch.func", ".4f"), ("ours_over_forward", "ours/fwd", ".2f"),
               ("torch_func_over_ours", "func/ours", ".2f")]  # fmt: skip
    report(f"Fisher pass benchmark on {rows[0]['device']} (median seconds per batch)", rows, columns, args.json)


if __name__ == "__main__":
    main()
