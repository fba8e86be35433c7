"""The generative-uncertainty score (pure functions)."""

from __future__ import annotations

import math

import torch


def member_variance(features: torch.Tensor) -> torch.Tensor:
    """Centred variance over members, in float64: features [K, B, D] -> [B, D].

    The maximum-likelihood (divide-by-K) variance of a moment-matched Gaussian. Computed centred and
    in float64 whatever the input dtype, so it is never negative (E[f²] − E[f]² in half precision can be).
    """
    if features.dim() != 3:
        raise ValueError(f"Expected member features [members, batch, dim], got shape {tuple(features.shape)}.")
    if features.shape[0] < 2:
        raise ValueError("The variance over members needs at least 2 members (e.g. M = 1 plus the pretrained sample).")
    f = features.double()
    return (f - f.mean(0)).pow(2).mean(0)


def gaussian_entropy(variance: torch.Tensor, noise_var: float) -> torch.Tensor:
    """Entropy of a diagonal Gaussian with variance ``variance + noise_var``: ½ Σ_d log(2πe(var_d + σ²)).

    Args:
        variance: [B, D] per-dimension variances.
        noise_var: σ², the likelihood's noise added to every dimension (must be positive).
    """
    if noise_var <= 0:
        raise ValueError(f"noise_var must be positive, got {noise_var}.")
    return 0.5 * torch.log(2 * math.pi * math.e * (variance.double() + noise_var)).sum(-1)


def generative_uncertainty(features: torch.Tensor, noise_var: float) -> torch.Tensor:
    """The score of Jazbec et al. (2025): entropy of the moment-matched Gaussian over member features.

    Args:
        features: [K, B, D], feature vectors of the K members of each of B samples.
        noise_var: σ_s², the semantic (or pixel) noise.

    Returns:
        Float64 scores [B]; higher means the sample is more likely poor.
    """
    return gaussian_entropy(member_variance(features), noise_var)
