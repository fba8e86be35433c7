"""The last-layer Laplace posterior: Fisher pass, posterior, Lightning wrappers."""

from genunc_lightning.laplace.callback import FisherAccumulationCallback
from genunc_lightning.laplace.fisher import FisherBatch, fisher_batch, per_example_gradients
from genunc_lightning.laplace.module import LaplaceFitModule
from genunc_lightning.laplace.posterior import (
    DiagonalLaplacePosterior,
    PosteriorFileError,
    PosteriorMismatchError,
    ZeroFisherError,
    log_marginal_likelihood,
    mean_squared_residual,
    optimal_prior_precision,
)

__all__ = [
    "DiagonalLaplacePosterior",
    "FisherAccumulationCallback",
    "FisherBatch",
    "LaplaceFitModule",
    "PosteriorFileError",
    "PosteriorMismatchError",
    "ZeroFisherError",
    "fisher_batch",
    "log_marginal_likelihood",
    "mean_squared_residual",
    "optimal_prior_precision",
    "per_example_gradients",
]
