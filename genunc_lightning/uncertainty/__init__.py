"""Scored sampling: the score, likelihoods, the predict-time LightningModule and the writer."""

from genunc_lightning.uncertainty.baselines import AleatoricUncertainty, BaselineScore, BayesDiff, DeepEnsemble
from genunc_lightning.uncertainty.likelihoods import Likelihood, PixelLikelihood, RealDataScale, SemanticLikelihood
from genunc_lightning.uncertainty.module import GenerativeUncertaintyModule
from genunc_lightning.uncertainty.prediction import ScoredPrediction
from genunc_lightning.uncertainty.scores import gaussian_entropy, generative_uncertainty, member_variance
from genunc_lightning.uncertainty.writer import ScoredSampleWriter, read_scores

__all__ = [
    "AleatoricUncertainty",
    "BaselineScore",
    "BayesDiff",
    "DeepEnsemble",
    "GenerativeUncertaintyModule",
    "Likelihood",
    "PixelLikelihood",
    "ScoredPrediction",
    "ScoredSampleWriter",
    "RealDataScale",
    "SemanticLikelihood",
    "gaussian_entropy",
    "generative_uncertainty",
    "member_variance",
    "read_scores",
]
