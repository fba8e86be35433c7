"""What leaving out the parameters the loss never reads changes in the marginal-likelihood λ.

Fits the `auto` posterior of the shipped digits UNet (`digits_unet_s6000`, last layer `out.2`) over
the digits training split, twice: as shipped (one output channel), and with ADM's learned-variance
layout (`out.2` widened to two channels, the trained prediction channel first, the second a copy
that the prediction loss never reads, `output_channels=1`). For each it prints the Fisher's exact
zeros, the parameters left out (``unread_entries``), and λ over the read parameters (what the
package uses) against λ over all of them (what it used before).

Usage: python benchmarks/unread_parameters.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import torch

from genunc_lightning.data import DigitsDataset
from genunc_lightning.experiments.digits_experiment import digits_adapter
from genunc_lightning.experiments.runs import fit_posterior
from genunc_lightning.laplace import optimal_prior_precision


def with_learned_variance_half(adapter):
    """The digits adapter with `out.2` widened to two output channels, the second unread (output_channels=1)."""
    conv = adapter.denoiser.out[2]
    wide = torch.nn.Conv2d(conv.in_channels, 2, conv.kernel_size, padding=conv.padding)
    with torch.no_grad():
        wide.weight.copy_(conv.weight.repeat(2, 1, 1, 1))
        wide.bias.copy_(conv.bias.repeat(2))
    adapter.denoiser.out[2] = wide
    adapter.output_channels = 1
    return adapter


def measure(adapter) -> dict:
    posterior = fit_posterior(adapter, DigitsDataset("train"))
    fisher = torch.cat([f.flatten() for f in posterior.fisher.values()])
    mean = torch.cat([m.double().flatten() for m in posterior.mean.values()])
    lam_all = optimal_prior_precision(float(mean.pow(2).sum()), fisher * posterior.likelihood_scale)
    summary = posterior.summary()
    return {
        "parameters": posterior.num_params,
        "fisher_exact_zeros": int((fisher == 0).sum()),
        "left_out": summary["unread_parameters"],
        "lambda_read_only": posterior.prior_precision,
        "lambda_all_parameters": lam_all,
        "lambda_ratio_all_over_read": lam_all / posterior.prior_precision,
        "fisher_median_read": summary["fisher_median"],
        "fisher_median_all": fisher.median().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = {
        "digits_unet_s6000 (1 output channel)": measure(digits_adapter(6000)),
        "digits_unet_s6000, learned-variance layout (2 channels, 1 read)": measure(
            with_learned_variance_half(digits_adapter(6000))
        ),
    }
    for name, r in results.items():
        print(f"{name}:")
        for key, value in r.items():
            print(f"  {key:28s} {value:.6g}" if isinstance(value, float) else f"  {key:28s} {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
