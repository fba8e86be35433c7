"""Pure functions for the evaluation metrics: Fréchet distance and k-NN manifold metrics.

k-NN manifold metrics (Kynkäänniemi et al. 2019; Han et al. 2023) describe a set of feature vectors
by the balls around each point with radius = the distance to its k-th nearest other point.
Distances are computed in chunks of rows, so memory stays O(chunk · N) rather than O(N²).
"""

from __future__ import annotations

import math

import torch

DEFAULT_CHUNK = 2048


def check_features(name: str, x: torch.Tensor) -> None:
    """Raises a ValueError naming ``name`` unless ``x`` is a non-empty, finite [N, D] tensor."""
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor [num_samples, num_features], got shape {tuple(x.shape)}.")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: the kept set has no samples.")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).any(1).nonzero().flatten()[:10].tolist()
        raise ValueError(f"{name} has NaN or inf values (rows {bad}): check the feature extractor and the inputs.")


def check_pair(real: torch.Tensor, fake: torch.Tensor, k: int | None = None) -> None:
    """``check_features`` on both sets, equal dimensions, and at least k + 1 reference points."""
    check_features("real features", real)
    check_features("fake features", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"Feature dimensions differ: real {real.shape[1]}, fake {fake.shape[1]}. Use the same extractor for both."
        )
    if k is not None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}.")
        if real.shape[0] < k + 1:
            raise ValueError(f"The reference set has {real.shape[0]} points; k = {k} needs at least {k + 1}.")


# --- Fréchet distance ----------------------------------------------------------------------


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance of ``features`` [N, D], in float64."""
    check_features("features", features)
    if features.shape[0] < 2:
        raise ValueError("The covariance needs at least 2 samples.")
    x = features.double()
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1^½ Σ2 Σ1^½)^½), in float64.

    Uses symmetric eigendecompositions (Σ1^½ Σ2 Σ1^½ is symmetric positive semi-definite), which
    is stabler than the eigenvalues of the non-symmetric product Σ1 Σ2.
    """
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"Statistics of different dimensions: {tuple(mu1.shape)} vs {tuple(mu2.shape)}.")
    evals, evecs = torch.linalg.eigh(sigma1)
    root1 = (evecs * evals.clamp(min=0).sqrt()) @ evecs.T
    middle = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt


def frechet_distance_features(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Fréchet distance between two feature sets."""
    check_pair(real, fake)
    return frechet_distance(*feature_statistics(fake), *feature_statistics(real))


# --- k-NN manifold metrics --------------------------------------------------------------------


def knn_radii(features: torch.Tensor, k: int = 3, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point of the same set."""
    check_features("features", features)
    if features.shape[0] < k + 1:
        raise ValueError(f"The set has {features.shape[0]} points; k = {k} needs at least {k + 1}.")
    out = torch.empty(features.shape[0], dtype=features.dtype, device=features.device)
    for start in range(0, features.shape[0], chunk):
        d = torch.cdist(features[start : start + chunk], features)
        # The point itself is among the k + 1 smallest (at distance ~0): the (k+1)-th is the k-th other.
        out[start : start + chunk] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return out


def _scan_balls(
    queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int, reduce: str
) -> torch.Tensor:
    """One value per query from its distances to the balls (centres, radii), chunk by chunk.

    ``inside``: within some ball; ``realism``: max radius / distance; ``rarity``: the smallest radius
    of a ball containing it (+inf when none does).
    """
    out = []
    for start in range(0, queries.shape[0], chunk):
        d = torch.cdist(queries[start : start + chunk], centres)
        if reduce == "inside":
            out.append((d <= radii).any(1))
        elif reduce == "realism":
            out.append((radii / d.clamp(min=1e-12)).max(1).values.double())
        else:
            inf = torch.tensor(math.inf, dtype=radii.dtype, device=radii.device)
            out.append(torch.where(d <= radii, radii, inf).min(1).values.double())
    return torch.cat(out)


def _real_radii(real: torch.Tensor, k: int, chunk: int, real_radii: torch.Tensor | None) -> torch.Tensor:
    if real_radii is None:
        return knn_radii(real, k, chunk)
    if real_radii.shape != (real.shape[0],):
        raise ValueError(f"real_radii has shape {tuple(real_radii.shape)}; expected ({real.shape[0]},).")
    return real_radii


def precision_recall(
    real: torch.Tensor,
    fake: torch.Tensor,
    k: int = 3,
    chunk: int = DEFAULT_CHUNK,
    real_radii: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Precision: the fraction of fake points inside some real point's k-NN ball; recall: the fraction
    of real points inside some fake point's k-NN ball. A point on a ball's boundary is inside, as in
    torch-fidelity's ``prc``. ``real_radii`` (``knn_radii(real, k)``) saves recomputing the
    reference balls when many fake sets are compared with one reference set.
    """
    check_pair(real, fake, k)
    if fake.shape[0] < k + 1:
        raise ValueError(f"The kept set has {fake.shape[0]} points; recall with k = {k} needs at least {k + 1}.")
    precision = _scan_balls(fake, real, _real_radii(real, k, chunk, real_radii), chunk, "inside").double().mean()
    recall = _scan_balls(real, fake, knn_radii(fake, k, chunk), chunk, "inside").double().mean()
    return precision, recall


def realism_score(
    real: torch.Tensor,
    fake: torch.Tensor,
    k: int = 3,
    prune_quantile: float = 0.5,
    chunk: int = DEFAULT_CHUNK,
    real_radii: torch.Tensor | None = None,
) -> torch.Tensor:
    """Realism score per fake point (Kynkäänniemi et al. 2019): max over real r of radius_r / ‖f − r‖.

    As in the authors' code, real balls with a radius above the ``prune_quantile`` quantile are
    dropped first (outliers with large balls would dominate the maximum). Higher = more realistic;
    above 1 means inside some kept real ball. The authors' code takes the ratio of squared
    distances, which ranks samples identically.
    """
    check_pair(real, fake, k)
    radii = _real_radii(real, k, chunk, real_radii)
    keep = radii <= torch.quantile(radii.double(), prune_quantile).to(radii.dtype)
    return _scan_balls(fake, real[keep], radii[keep], chunk, "realism")


def rarity_score(
    real: torch.Tensor,
    fake: torch.Tensor,
    k: int = 3,
    chunk: int = DEFAULT_CHUNK,
    real_radii: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rarity score per fake point (Han et al. 2023): the smallest radius of a real k-NN ball containing it.

    Lower = more typical. A point outside every real ball scores +inf.
    """
    check_pair(real, fake, k)
    return _scan_balls(fake, real, _real_radii(real, k, chunk, real_radii), chunk, "rarity")


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 0 … N − 1 in float64, tied values sharing their mean rank (±inf ranked as the extremes)."""
    _, inverse, counts = torch.unique(values.double(), sorted=True, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # the rank of each distinct value's first occurrence
    return (first + (counts - 1) / 2).double()[inverse]


def auroc(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for telling ``positives`` (higher = more likely positive).

    The Mann–Whitney statistic: the chance that a random positive scores above a random negative, a
    tie counting one half. NaN when either group is empty.
    """
    positives = positives.bool()
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = average_ranks(scores)[positives].sum().item() + n_pos  # 1-based ranks
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def kernel_within(x: torch.Tensor, degree: int = 3, gamma: float | None = None, coef: float = 1.0) -> torch.Tensor:
    """The mean off-diagonal polynomial kernel of a feature set with itself (one term of KID), float64."""
    from torchmetrics.image.kid import poly_kernel

    x = x.double()
    m = len(x)
    if m < 2:
        raise ValueError(f"KID needs at least 2 features in each set, got {m}.")
    k = poly_kernel(x, x, degree, gamma, coef)
    return (k.sum() - k.diagonal().sum()) / (m * (m - 1))


def kernel_distance(
    real: torch.Tensor,
    fake: torch.Tensor,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    within_real: torch.Tensor | None = None,
    within_fake: torch.Tensor | None = None,
) -> torch.Tensor:
    """KID: the unbiased MMD² of two feature sets under torchmetrics' polynomial kernel, in float64.

    ``(x·y·γ + coef)^degree`` with γ = 1/D by default, as in torchmetrics' ``KernelInceptionDistance``.
    The sets may differ in size; for equal sizes this is torchmetrics' ``poly_mmd`` (the value of one
    of its subsets). ``within_real`` / ``within_fake``: ``kernel_within`` of either set, when one set
    meets many others (a reference and many kept sets, a kept set and many reference subsets).
    """
    from torchmetrics.image.kid import poly_kernel

    if within_real is None:
        within_real = kernel_within(real, degree, gamma, coef)
    if within_fake is None:
        within_fake = kernel_within(fake, degree, gamma, coef)
    cross = poly_kernel(real.double(), fake.double(), degree, gamma, coef).mean()
    return within_real + within_fake - 2 * cross
