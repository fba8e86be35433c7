"""genunc-lightning: generative uncertainty for pretrained diffusion and flow-matching models."""

__version__ = "0.6.0"

from genunc_lightning.adapters import (  # noqa: E402
    DiffusionAdapter,
    FlowMatchingAdapter,
    GaussianDiffusionAdapter,
)
from genunc_lightning.laplace import (  # noqa: E402
    DiagonalLaplacePosterior,
    FisherAccumulationCallback,
    LaplaceFitModule,
)

__all__ = [
    "DiffusionAdapter",
    "GaussianDiffusionAdapter",
    "FlowMatchingAdapter",
    "DiagonalLaplacePosterior",
    "FisherAccumulationCallback",
    "LaplaceFitModule",
    "__version__",
]
