"""Likelihoods: how member samples become features for the score (semantic, pixel)."""

from __future__ import annotations

import torch
from torch import nn

from genunc_lightning.fingerprints import fingerprint, manifest_entry_of
from genunc_lightning.uncertainty.scores import generative_uncertainty, member_variance


class RealDataScale(nn.Module):
    """Per-dimension standardisation of features by real data, with the dimensions that do not vary dropped.

    With it, a likelihood's noise σ² is relative to each live dimension's real-data variance (σ² = 0.01:
    1% of it), so it means the same on any extractor; on raw features σ² = 1e-3 means something else for
    CLIP, for a small CNN and for pixels. A dimension that is constant on real data (a ReLU feature that is
    always zero, a pixel that is always black) carries no information, and would add log σ² to every score.

    Build it with ``RealDataScale.fit(features_of_real_data)``.

    Args:
        mean: [D] per-dimension mean over real data.
        std: [D] per-dimension standard deviation over real data.
        live: [D] booleans, the dimensions kept.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, live: torch.Tensor) -> None:
        super().__init__()
        if not live.any():
            raise ValueError("No feature dimension varies on the real data: nothing to standardise.")
        self.register_buffer("mean", mean.double())
        self.register_buffer("std", std.double())
        self.register_buffer("live", live.bool())

    @classmethod
    def fit(cls, real_features: torch.Tensor, dead_ratio: float = 1e-6) -> RealDataScale:
        """From features [N, D] of real data; dimensions whose std is below ``dead_ratio`` × the largest are dropped."""
        f = real_features.flatten(1).double()
        if f.shape[0] < 2:
            raise ValueError(f"Standardising needs features of at least 2 real items, got {f.shape[0]}.")
        std = f.std(0)
        return cls(f.mean(0), std, std > dead_ratio * std.max())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Standardised live dimensions [N, D_live] of features [N, D], float64."""
        if features.shape[-1] != self.mean.numel():
            raise ValueError(
                f"Features have {features.shape[-1]} dimensions, the real-data scale was fitted on {self.mean.numel()}."
            )
        return ((features.double() - self.mean) / self.std)[..., self.live]

    def manifest_entry(self) -> dict:
        """Its size and a fingerprint of its statistics."""
        return {"class": type(self).__name__, "live": int(self.live.sum()), "dims": int(self.live.numel()),
                "fingerprint": fingerprint(self)}  # fmt: skip


class Likelihood(nn.Module):
    """Maps decoded member samples to feature vectors and scores them.

    Args:
        name: column name of the score in the scores table.
        noise_var: σ² added to every feature dimension's variance.
        scale: standardise the features by real data first (``RealDataScale``); σ² is then relative to
            each live dimension's real-data variance.
    """

    def __init__(self, name: str, noise_var: float = 1e-3, scale: RealDataScale | None = None) -> None:
        super().__init__()
        if noise_var <= 0:
            raise ValueError(f"noise_var must be positive, got {noise_var}.")
        self.name = name
        self.noise_var = float(noise_var)
        self.scale = scale

    def features(self, samples: torch.Tensor) -> torch.Tensor:
        """Features [N, D] of decoded samples [N, ...]."""
        raise NotImplementedError

    def score(self, members: torch.Tensor) -> torch.Tensor:
        """Scores [B] from decoded member samples [K, B, ...]."""
        k, b = members.shape[:2]
        feats = self.features(members.flatten(0, 1)).flatten(1)
        if self.scale is not None:
            feats = self.scale(feats)
        return generative_uncertainty(feats.reshape(k, b, -1), self.noise_var)

    def manifest_entry(self) -> dict:
        """What identifies this likelihood in a run's manifest."""
        entry = {"class": type(self).__name__, "name": self.name, "noise_var": self.noise_var}
        return {**entry, "scale": self.scale.manifest_entry()} if self.scale is not None else entry


class SemanticLikelihood(Likelihood):
    """Features from a feature extractor (CLIP in the paper; σ_s² = 1e-3 on raw CLIP ViT-B/32 features).

    Args:
        encoder: maps decoded samples (images in [0, 1]) to features [N, D]; see
            ``genunc_lightning.encoders``.
        noise_var: σ_s².
        name: column name of the score.
        scale: standardise the features by real data first (``RealDataScale``).
    """

    def __init__(
        self, encoder: nn.Module, noise_var: float = 1e-3, name: str = "semantic", scale: RealDataScale | None = None
    ) -> None:
        super().__init__(name, noise_var, scale)
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
        scale: standardise the pixels by real data first (``RealDataScale``).
    """

    def __init__(self, noise_var: float = 1e-3, name: str = "pixel", scale: RealDataScale | None = None) -> None:
        super().__init__(name, noise_var, scale)

    def features(self, samples: torch.Tensor) -> torch.Tensor:
        """The samples themselves, flattened."""
        return samples.flatten(1)

    @staticmethod
    def variance_map(members: torch.Tensor) -> torch.Tensor:
        """Per-pixel variance over members: [K, B, ...] -> [B, ...] (float64)."""
        k, b = members.shape[:2]
        return member_variance(members.reshape(k, b, -1)).view(b, *members.shape[2:])
