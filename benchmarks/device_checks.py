"""Correctness checks on an accelerator (not part of the CPU suite): run where a GPU is available.

1. The Fisher pass on the device equals a brute-force per-example autograd loop (float64 conv model).
2. Scored sampling in bf16 autocast: finite scores, and a zero-variance posterior gives zero variance.
3. Per-seed determinism on the device: a sample is the same in a batch of 1 and in a batch of 8.
"""

from __future__ import annotations

import math
import sys

import torch

from genunc_lightning.adapters import GaussianDiffusionAdapter
from genunc_lightning.laplace import DiagonalLaplacePosterior, fisher_batch
from genunc_lightning.models import SmallUNet
from genunc_lightning.seeding import example_seeds
from genunc_lightning.uncertainty import GenerativeUncertaintyModule, SemanticLikelihood, member_variance


def main(device: str = "cuda") -> None:
    dev = torch.device(device)
    torch.manual_seed(0)
    model = SmallUNet(in_channels=3, base_channels=16, channel_mults=(1, 2), learn_sigma=True).double().to(dev)
    adapter = GaussianDiffusionAdapter(model, "out.2", (3, 16, 16), output_channels=3).to(dev)
    x = torch.randn(6, 3, 16, 16, dtype=torch.float64, device=dev)
    seeds = example_seeds(0, range(6))
    ours = fisher_batch(adapter, x, [seeds])
    layer = model.out[2]
    ref = {n: torch.zeros_like(p) for n, p in layer.named_parameters()}
    for b in range(6):
        grads = torch.autograd.grad(adapter.loss(x[b : b + 1], seeds[b : b + 1]).sum(), list(layer.parameters()))
        for (n, _), g in zip(layer.named_parameters(), grads, strict=True):
            ref[n] += g.double() ** 2
    err = max(((ours.diag[n] - ref[n]).abs().max() / ref[n].abs().max()).item() for n in ref)
    print(f"[1] Fisher on {device} vs brute force: max relative error {err:.2e}", "OK" if err < 1e-6 else "FAIL")

    model = model.float()
    adapter = GaussianDiffusionAdapter(model, "out.2", (3, 16, 16), output_channels=3, image_range=(-1, 1), steps=10)
    fb = fisher_batch(adapter, x.float(), [seeds])
    post = DiagonalLaplacePosterior.fit(layer, "out.2", fb.diag, 6, float(fb.squared_residual_sum), fb.num_residuals)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 32)).to(dev)
    batch = {"index": torch.arange(8), "seed": torch.arange(8), "class": torch.full((8,), -1)}
    for temperature in (None, 0.0):
        module = GenerativeUncertaintyModule(
            adapter, post, [SemanticLikelihood(encoder)], num_members=5, temperature=temperature
        ).to(dev)
        module.on_predict_start()
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
            out = module.predict_step(batch, 0)
            _, members = module.generate_scored(batch["seed"], None)
        var = member_variance(encoder(members.flatten(0, 1).float()).view(6, 8, -1).detach())
        scores = out["scores"]["semantic"]
        ok = torch.isfinite(scores).all().item() and (var >= 0).all().item()
        if temperature == 0.0:
            ok = ok and var.abs().max().item() == 0.0
            expected = 0.5 * 32 * math.log(2 * math.pi * math.e * 1e-3)
            ok = ok and abs(scores.max().item() - expected) < 1e-9
        print(
            f"[2] bf16 scored sampling, temperature={temperature}: max var {var.max().item():.3e}",
            "OK" if ok else "FAIL",
        )

    one = adapter.sample(torch.tensor([5]), steps=10)
    eight = adapter.sample(torch.arange(8), steps=10)
    diff = ((one[0] - eight[5]).abs().max() / eight[5].abs().max()).item()
    print(f"[3] batch of 1 vs batch of 8 on {device}: max relative diff {diff:.2e}", "OK" if diff < 1e-4 else "FAIL")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cuda")
