"""Likelihoods: how member samples become features for the score (semantic, pixel)."""

from __future__ import annotations

import torch
from torch import nn

from genunc_lightning.fingerprints import manifest_entry_of
from genunc_lightning.uncertainty.scores import generative_uncertainty, member_variance


class Likelihood(nn.Module):
    """Maps decoded member samples to feature vectors and scores them.

    Args:
        name: column name of the score in the scores table.
        noise_var: σ² added to every feature dimension's variance.
    """

    def __init__(self, name: str, noise_var: float = 1e-3) -> None:
        super().__init__()
        if noise_var <= 0:
            raise ValueError(f"noise_var must be positive, got {noise_var}.")
        self.name = name
        self.noise_var = float(noise_var)

    def features(self, samples: torch.Tensor) -> torch.Tensor:
        """Features [N, D] of decoded samples [N, ...]."""
        raise NotImplementedError

    def score(self, members: torch.Tensor) -> torch.Tensor:
        """Scores [B] from decoded member samples [K, B, ...]."""
        k, b = members.shape[:2]
        feats = self.features(members.flatten(0, 1))
        return generative_uncertainty(feats.reshape(k, b, -1), self.noise_var)

    def manifest_entry(self) -> dict:
        """What identifies this likelihood in a run's manifest."""
        return {"class": type(self).__name__, "name": self.name, "noise_var": self.noise_var}


class SemanticLikelihood(Likelihood):
    """Features from a feature extractor (CLIP in the paper; σ_s² = 1e-3 on raw CLIP ViT-B/32 features).

    Args:
        encoder: maps decoded samples (images in [0, 1]) to features [N, D]; see
            ``genunc_lightning.encoders``.
        noise_var: σ_s².
        name: column name of the score.
    """

    def __init__(self, encoder: nn.Module, noise_var: float = 1e-3, name: str = "semantic") -> None:
        super().__init__(name, noise_var)
        self.encoder = encoder.eval().requires_grad_(False)

    @torch.no_grad()
    def features(self, samples: torch.Tensor) -> torch.Tensor:
        """Encoder features, flattened to [N, D]."""
        return self.encoder(samples).flatten(1)

    def manifest_entry(self) -> dict:
        """Includes the encoder's manifest entry (its weights' fingerprint for a plain module)."""
        ident = super().manifest_entry()
        ident["encoder"] = manifest_entry_of(self.encoder)
        return ident


class PixelLikelihood(Likelihood):
    """Identity features: generative uncertainty in pixel space (the paper's pixel-space baseline).

    Args:
        noise_var: σ² per pixel.
        name: column name of the score.
    """

    def __init__(self, noise_var: float = 1e-3, name: str = "pixel") -> None:
        super().__init__(name, noise_var)

    def features(self, samples: torch.Tensor) -> torch.Tensor:
        """The samples themselves, flattened."""
        return samples.flatten(1)

    @staticmethod
    def variance_map(members: torch.Tensor) -> torch.Tensor:
        """Per-pixel variance over members: [K, B, ...] -> [B, ...] (float64)."""
        k, b = members.shape[:2]
        return member_variance(members.reshape(k, b, -1)).view(b, *members.shape[2:])
