"""Small built-in denoisers and the training module behind `genunc fit`."""

from genunc_lightning.models.denoisers import MLPDenoiser, SmallUNet, timestep_embedding
from genunc_lightning.models.training import DiffusionTrainingModule, WeightSnapshots

__all__ = [
    "DiffusionTrainingModule",
    "MLPDenoiser",
    "SmallUNet",
    "timestep_embedding",
    "WeightSnapshots",
]
