"""How good a kept set is: the package's Metrics against one reference set, and the scores' agreement."""

from __future__ import annotations

import torch

from genunc_lightning.metrics import PrecisionRecall
from genunc_lightning.metrics import functional as MF


class ReferenceMeasure:
    """FID, precision and recall of kept sets, each against the same reference features.

    What depends on the reference alone is computed once: its feature statistics, and a
    ``PrecisionRecall`` Metric holding its features and k-NN radii, which measures each kept set. FID uses
    the functional core's centred statistics rather than ``FrechetDistance``'s streaming sums, which
    exist to merge across DDP ranks and differ by about 2e-6 relative on the digits features.

    Args:
        real: the reference features [N, D].
        fake: every sample's features [M, D] (kept sets index into them).
        k: the neighbourhood size of precision and recall.
        off_class: which samples are off-class, for the off-class rate (``None``: not measured).
    """

    def __init__(self, real: torch.Tensor, fake: torch.Tensor, k: int, off_class: torch.Tensor | None = None) -> None:
        self.fake, self.off_class = fake, off_class
        self.real_statistics = MF.feature_statistics(real)
        self.prc = PrecisionRecall(k=k)
        self.prc.update(real, real=True)
        self.prc.real_radii()

    def __call__(self, idx: torch.Tensor) -> dict[str, float]:
        """FID, precision, recall (and the off-class rate) of the kept set ``idx``."""
        kept = self.fake[idx]
        pr = self.prc.against(kept)
        fid = MF.frechet_distance(*MF.feature_statistics(kept), *self.real_statistics)
        out = {"fid": fid.item(), "precision": pr["precision"].item(), "recall": pr["recall"].item()}
        if self.off_class is not None:
            out["off_class"] = self.off_class[idx].double().mean().item()
        return out


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
