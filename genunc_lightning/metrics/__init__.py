"""Evaluation metrics: Fréchet distance, precision/recall, realism and rarity (functional and Metric)."""

from genunc_lightning.metrics.functional import (
    feature_statistics,
    frechet_distance,
    frechet_distance_features,
    knn_radii,
    precision_recall,
    rarity_score,
    realism_score,
)
from genunc_lightning.metrics.metrics import FrechetDistance, PrecisionRecall, RarityScore, RealismScore

__all__ = [
    "FrechetDistance",
    "PrecisionRecall",
    "RarityScore",
    "RealismScore",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_features",
    "knn_radii",
    "precision_recall",
    "rarity_score",
    "realism_score",
]
