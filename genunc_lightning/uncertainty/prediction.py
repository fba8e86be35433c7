"""The one prediction-dict contract between scored sampling and everything that reads its results."""

from __future__ import annotations

from typing import TypedDict

import torch

# The functional form, since "class" is a keyword.
_ScoredPredictionRequired = TypedDict(
    "_ScoredPredictionRequired",
    {"index": torch.Tensor, "seed": torch.Tensor, "class": torch.Tensor, "scores": dict, "sample": torch.Tensor},
)


class ScoredPrediction(_ScoredPredictionRequired, total=False):
    """What ``GenerativeUncertaintyModule.predict_step`` returns and ``ScoredSampleWriter`` writes, per batch of B.

    Keys:
        index: LongTensor [B], the samples' indices in the run (0 … num_samples − 1).
        seed: LongTensor [B], each sample's seed; its noise comes from this seed alone.
        class: LongTensor [B], the class asked for, −1 for an unconditional model.
        scores: score name -> float64 [B]; higher = more uncertain (one column of ``scores.csv`` each).
            +inf marks a sample whose members diverged.
        sample: the decoded kept samples [B, ...] (images in [0, 1] for image models).
        variance_maps: optional, float [B, ...], the per-pixel variance over members.
    """

    variance_maps: torch.Tensor


PREDICTION_KEYS = ("index", "seed", "class", "scores", "sample")


def check_prediction(prediction: dict) -> None:
    """Raises a TypeError naming the missing keys of a prediction that does not follow ``ScoredPrediction``."""
    if not isinstance(prediction, dict):
        raise TypeError(f"A scored prediction is a dict (ScoredPrediction), got {type(prediction).__name__}.")
    missing = [k for k in PREDICTION_KEYS if k not in prediction]
    if missing:
        raise TypeError(
            f"The prediction lacks {missing}: predict_step must return a ScoredPrediction "
            "(genunc_lightning.uncertainty.prediction)."
        )
