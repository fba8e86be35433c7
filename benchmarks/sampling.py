"""Cost of uncertainty-scored sampling against plain sampling, as a ratio to the NFE bound.

At the same batch, times plain DDIM sampling with T steps and scored sampling
(``GenerativeUncertaintyModule.predict_step`` with the pixel likelihood) for (M, T', pretrained
member) in {(5, T, kept), (1, T/5, kept), (1, T/5, rerun)}. The NFE bound is the module's network
evaluations per sample over plain sampling's T: 1 + M·T'/T when the kept sample is the pretrained
member, 1 + (M + 1)·T'/T when the pretrained weights are re-run at T' (``pretrained_member="rerun"``,
T' < T). Target (issue 3): scored time <= 1.05x the bound times plain time on the CPU. On a GPU it
also reports images per second, in bf16 autocast by default.

Usage: python benchmarks/sampling.py [--device cuda] [--size small|adm128] [--batch N] [--steps T]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SIZES, describe_device, median_seconds, report  # noqa: E402

from genunc_lightning.adapters import GaussianDiffusionAdapter  # noqa: E402
from genunc_lightning.laplace import DiagonalLaplacePosterior  # noqa: E402
from genunc_lightning.models import SmallUNet  # noqa: E402
from genunc_lightning.uncertainty import GenerativeUncertaintyModule, PixelLikelihood  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", default=None, choices=sorted(SIZES))
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    size = args.size or ("adm128" if device.type == "cuda" else "small")
    steps = args.steps or (50 if device.type == "cuda" else 20)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    cfg = SIZES[size]
    batch = args.batch or cfg["batch"]

    torch.manual_seed(0)
    model = SmallUNet(**cfg["unet"]).to(device).eval()
    adapter = GaussianDiffusionAdapter(
        model, "out.2", cfg["shape"], sampler="ddim", steps=steps, output_channels=3, image_range=(-1, 1)
    ).to(device)
    layer = model.out[2]
    fisher = {n: torch.full_like(p, 1e4, dtype=torch.float64).cpu() for n, p in layer.named_parameters()}
    posterior = DiagonalLaplacePosterior.fit(layer, "out.2", fisher, 1000, 1000.0, 1000, sigma=1.0, prior_precision=1.0)
    seeds = torch.arange(batch)
    batch_dict = {"index": seeds, "seed": seeds, "class": torch.full((batch,), -1)}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

    def plain() -> None:
        with autocast:
            adapter.sample(seeds, None, steps=steps)

    plain_s = median_seconds(plain, device, args.repeats, warmup=1)
    rows = []
    cheap = max(1, steps // 5)
    for members, member_steps, pretrained in [(5, steps, "kept"), (1, cheap, "kept"), (1, cheap, "rerun")]:
        module = GenerativeUncertaintyModule(
            adapter, posterior, [PixelLikelihood()], num_members=members, steps=steps, member_steps=member_steps,
            pretrained_member=pretrained,
        ).to(device)  # fmt: skip
        module.on_predict_start()

        def scored(module: GenerativeUncertaintyModule = module) -> None:
            with torch.no_grad(), autocast:
                module.predict_step(batch_dict, 0)

        scored_s = median_seconds(scored, device, args.repeats, warmup=1)
        bound = module.network_evaluations_per_sample() / steps
        rows.append(
            {
                "device": describe_device(device),
                "size": size,
                "precision": precision,
                "batch": batch,
                "T": steps,
                "M": members,
                "T_prime": member_steps,
                "pretrained_member": pretrained,
                "plain_s": plain_s,
                "scored_s": scored_s,
                "nfe_bound": bound,
                "ratio_to_bound": scored_s / (bound * plain_s),
                "plain_img_per_s": batch / plain_s,
                "scored_img_per_s": batch / scored_s,
            }
        )
    columns = [("M", "M", ""), ("T_prime", "T'", ""), ("pretrained_member", "member 0", ""),
               ("plain_s", "plain s", ".3f"), ("scored_s", "scored s", ".3f"),
               ("nfe_bound", "bound", ".2f"), ("ratio_to_bound", "ratio/bound", ".3f"),
               ("plain_img_per_s", "img/s plain", ".2f"), ("scored_img_per_s", "img/s scored", ".2f")]  # fmt: skip
    title = f"Scored sampling on {rows[0]['device']}, {size} UNet, {precision}, batch {batch}, T = {steps}"
    report(title, rows, columns, args.json)


if __name__ == "__main__":
    main()
