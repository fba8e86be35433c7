"""torchmetrics Metrics over any feature extractor; states sync under DDP.

Each metric takes ``update(x, real: bool)`` with raw inputs (passed through ``feature_extractor``)
or, when no extractor is given, feature vectors [N, D]. ``compute`` calls the functional core in
``genunc_lightning.metrics.functional``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from genunc_lightning.metrics import functional as F


class _FeatureMetric(Metric):
    is_differentiable = False
    full_state_update = False

    def __init__(self, feature_extractor: nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.feature_extractor = feature_extractor
        if feature_extractor is not None:
            feature_extractor.eval().requires_grad_(False)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.feature_extractor is not None:
            with torch.no_grad():
                x = self.feature_extractor(x)
        if x.dim() != 2:
            raise ValueError(f"Features must be [N, D], got {tuple(x.shape)}: pass a feature_extractor for images.")
        return x


class _FeatureSetMetric(_FeatureMetric):
    """Keeps the real and the fake feature sets (gathered across ranks with ``cat``)."""

    def __init__(self, feature_extractor: nn.Module | None = None, k: int = 3, chunk: int = F.DEFAULT_CHUNK, **kwargs):
        super().__init__(feature_extractor, **kwargs)
        self.k, self.chunk = k, chunk
        self.add_state("real_features", default=[], dist_reduce_fx="cat")
        self.add_state("fake_features", default=[], dist_reduce_fx="cat")

    def update(self, x: torch.Tensor, real: bool) -> None:
        """Adds a batch of real or fake inputs."""
        (self.real_features if real else self.fake_features).append(self._features(x).float())

    def _sets(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Each state is a list of batches, or one tensor after a DDP sync.
        if any(len(state) == 0 for state in (self.real_features, self.fake_features)):
            raise ValueError("Both a real and a fake set are needed: call update(x, real=True) and (x, real=False).")
        return dim_zero_cat(self.real_features), dim_zero_cat(self.fake_features)


class PrecisionRecall(_FeatureSetMetric):
    """Improved precision and recall (Kynkäänniemi et al. 2019), k = 3 by default.

    Example:
        >>> import torch
        >>> metric = PrecisionRecall(k=3)
        >>> metric.update(torch.randn(100, 8), real=True)
        >>> metric.update(torch.randn(80, 8), real=False)
        >>> sorted(metric.compute())
        ['precision', 'recall']
    """

    higher_is_better = True

    def real_radii(self) -> torch.Tensor:
        """The real set's k-NN radii, computed once and kept (a clone of this metric keeps them too).

        Measuring many fake sets against one real set: update the real set, then ``against`` each fake set.
        """
        real = dim_zero_cat(self.real_features)
        if getattr(self, "_real_radii", None) is None or self._real_radii.shape[0] != real.shape[0]:
            self._real_radii = F.knn_radii(real, self.k, self.chunk)
        return self._real_radii

    def against(self, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """Precision and recall of ``fake`` against the real set held, without adding it to the state.

        The real set's radii are computed once (``real_radii``), so kept set after kept set costs only
        the fake side.
        """
        real = dim_zero_cat(self.real_features)
        precision, recall = F.precision_recall(
            real, self._features(fake).float(), k=self.k, chunk=self.chunk, real_radii=self.real_radii()
        )
        return {"precision": precision, "recall": recall}

    def compute(self) -> dict[str, torch.Tensor]:
        """Precision and recall of the fake set against the real set."""
        real, fake = self._sets()
        radii = self._real_radii if getattr(self, "_real_radii", None) is not None else None
        if radii is not None and radii.shape[0] != real.shape[0]:
            radii = None  # the real set grew since the radii were kept
        precision, recall = F.precision_recall(real, fake, k=self.k, chunk=self.chunk, real_radii=radii)
        return {"precision": precision, "recall": recall}


class RealismScore(_FeatureSetMetric):
    """Per-sample realism score of the fake set (higher = more realistic); see ``functional.realism_score``."""

    higher_is_better = True

    def __init__(self, feature_extractor: nn.Module | None = None, k: int = 3, prune_quantile: float = 0.5, **kwargs):
        super().__init__(feature_extractor, k, **kwargs)
        self.prune_quantile = prune_quantile

    def compute(self) -> torch.Tensor:
        """One score per fake sample, in the order they were added (rank-major under DDP)."""
        return F.realism_score(*self._sets(), k=self.k, prune_quantile=self.prune_quantile, chunk=self.chunk)


class RarityScore(_FeatureSetMetric):
    """Per-sample rarity score of the fake set (lower = more typical, +inf off the real manifold)."""

    higher_is_better = False

    def compute(self) -> torch.Tensor:
        """One score per fake sample, in the order they were added (rank-major under DDP)."""
        return F.rarity_score(*self._sets(), k=self.k, chunk=self.chunk)


class FrechetDistance(_FeatureMetric):
    """Fréchet distance between the real and fake feature distributions (FID on Inception features).

    States are feature sums and outer-product sums in float64 (summed across ranks), as in
    torchmetrics' FrechetInceptionDistance, so memory does not grow with the number of samples.

    Args:
        feature_extractor: maps inputs to features; ``None`` when updating with features.
        num_features: feature dimension (inferred from the first update when ``None``).
    """

    higher_is_better = False

    def __init__(self, feature_extractor: nn.Module | None = None, num_features: int | None = None, **kwargs):
        super().__init__(feature_extractor, **kwargs)
        self.num_features = num_features
        for side in ("real", "fake"):
            self.add_state(f"{side}_sum", default=torch.zeros(0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", default=torch.zeros(0, 0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        if num_features is not None:
            self._allocate(num_features)

    def _allocate(self, d: int) -> None:
        for side in ("real", "fake"):
            setattr(self, f"{side}_sum", torch.zeros(d, dtype=torch.float64, device=self.device))
            setattr(self, f"{side}_outer", torch.zeros(d, d, dtype=torch.float64, device=self.device))
        self.num_features = d

    def update(self, x: torch.Tensor, real: bool) -> None:
        """Adds a batch of real or fake inputs."""
        feats = self._features(x)
        F.check_features("features", feats)
        if self.real_sum.numel() == 0:  # first update since construction or reset
            self._allocate(feats.shape[1] if self.num_features is None else self.num_features)
        if feats.shape[1] != self.num_features:
            raise ValueError(f"Features have dimension {feats.shape[1]}, this metric has {self.num_features}.")
        f = feats.double()
        side = "real" if real else "fake"
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + f.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + f.T @ f)
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + f.shape[0])

    def _stats(self, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        n = getattr(self, f"{side}_count")
        if n < 2:
            raise ValueError(f"The {side} set has {int(n)} samples; the Fréchet distance needs at least 2.")
        mu = getattr(self, f"{side}_sum") / n
        cov = (getattr(self, f"{side}_outer") - n * torch.outer(mu, mu)) / (n - 1)
        return mu, cov

    def compute(self) -> torch.Tensor:
        """The Fréchet distance (float64)."""
        return F.frechet_distance(*self._stats("fake"), *self._stats("real"))
