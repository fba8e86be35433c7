"""How good a kept set is: the package's Metrics against one reference set, and the scores' agreement."""

from __future__ import annotations

import torch

from genunc_lightning.metrics import PrecisionRecall
from genunc_lightning.metrics import functional as MF


class ReferenceMeasure:
    """FID, precision and recall (and KID, and failure rates) of kept sets, each against the same reference features.

    What depends on the reference alone is computed once: its feature statistics, its KID subsets, and a
    ``PrecisionRecall`` Metric holding its features and k-NN radii, which measures each kept set. FID uses
    the functional core's centred statistics rather than ``FrechetDistance``'s streaming sums, which
    exist to merge across DDP ranks and differ by about 2e-6 relative on the digits features.

    Args:
        real: the reference features [N, D].
        fake: every sample's features [M, D] (kept sets index into them).
        k: the neighbourhood size of precision and recall.
        failures: boolean masks over the samples (e.g. ``{"off_class": …}``); each kept set gets the share
            of its samples each mask flags.
        kid_subsets: how many reference subsets KID averages over (0: no KID). They are drawn once, so
            every kept set is compared on the same draws.
        kid_subset_size: the size of each (default: the whole reference).
        seed: seed of the KID subsets.
    """

    def __init__(
        self,
        real: torch.Tensor,
        fake: torch.Tensor,
        k: int,
        failures: dict[str, torch.Tensor] | None = None,
        kid_subsets: int = 0,
        kid_subset_size: int | None = None,
        seed: int = 0,
    ) -> None:
        self.fake, self.failures = fake, failures or {}
        self.real_statistics = MF.feature_statistics(real)
        self.prc = PrecisionRecall(k=k)
        self.prc.update(real, real=True)
        self.prc.real_radii()
        g = torch.Generator().manual_seed(seed)
        size = min(kid_subset_size or len(real), len(real))
        self.kid_reference = [real[torch.randperm(len(real), generator=g)[:size]] for _ in range(kid_subsets)]
        # the reference subsets' own kernel term is the same for every kept set: computed once
        self.kid_within_real = [MF.kernel_within(r) for r in self.kid_reference]

    def __call__(self, idx: torch.Tensor) -> dict[str, float]:
        """FID, precision, recall (KID, and each failure rate) of the kept set ``idx``."""
        kept = self.fake[idx]
        pr = self.prc.against(kept)
        fid = MF.frechet_distance(*MF.feature_statistics(kept), *self.real_statistics)
        out = {"fid": fid.item(), "precision": pr["precision"].item(), "recall": pr["recall"].item()}
        if self.kid_reference:
            within_kept = MF.kernel_within(kept)  # the same against every reference subset
            pairs = zip(self.kid_reference, self.kid_within_real, strict=True)
            kid = [MF.kernel_distance(r, kept, within_real=w, within_fake=within_kept) for r, w in pairs]
            out["kid"] = torch.stack(kid).mean().item()
        for name, mask in self.failures.items():
            out[name] = mask[idx].double().mean().item()
        return out


@torch.no_grad()
def network_outputs(
    network: torch.nn.Module, samples: torch.Tensor, batch_size: int = 256, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Outputs [N, D] of ``network`` on samples, in batches, in eval mode, as float32 on the CPU."""
    network.to(device).eval()
    return torch.cat([network(b.to(device)).float().cpu() for b in samples.split(batch_size)]).flatten(1)


def mean_and_std(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean and (as ``<metric>_std``) standard deviation over repeated kept sets."""
    values = {m: torch.tensor([r[m] for r in runs], dtype=torch.float64) for m in runs[0]}
    means = {m: float(v.mean()) for m, v in values.items()}
    return {**means, **{f"{m}_std": float(v.std()) for m, v in values.items()}, "subsets": len(runs)}


# AUROC and Spearman stay float64 (Mann-Whitney on average ranks; Pearson on average ranks): torchmetrics'
# binary_auroc and spearman_corrcoef compute in float32, measured here 1e-8 to 4e-8 away from sklearn and
# scipy, which would move published numbers. Both are tested against those references.
auroc = MF.auroc


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (average ranks for ties; ±inf ranked as the extremes), float64."""
    ra, rb = MF.average_ranks(a), MF.average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denom) if denom > 0 else float("nan")
