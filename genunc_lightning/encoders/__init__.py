"""Feature extractors for the semantic likelihood and the metrics, from local weight files only."""

from genunc_lightning.encoders.extractors import (
    CLIP_MEAN,
    CLIP_STD,
    FeatureExtractor,
    InceptionEncoder,
    MissingWeightsError,
    ModuleEncoder,
    OpenCLIPEncoder,
    TimmEncoder,
    normalize,
    resize_center_crop,
    to_rgb,
)
from genunc_lightning.encoders.pca import PixelPCA

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "FeatureExtractor",
    "InceptionEncoder",
    "MissingWeightsError",
    "ModuleEncoder",
    "OpenCLIPEncoder",
    "PixelPCA",
    "TimmEncoder",
    "normalize",
    "resize_center_crop",
    "to_rgb",
]
