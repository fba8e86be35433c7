"""Adapters: the one contract between a user's model and everything else."""

from genunc_lightning.adapters.base import DenoiserCallError, DiffusionAdapter
from genunc_lightning.adapters.diffusers import DiffusersAdapter, DiffusersPipelineAdapter
from genunc_lightning.adapters.flow import FlowMatchingAdapter
from genunc_lightning.adapters.gaussian import GaussianDiffusionAdapter, alphas_cumprod
from genunc_lightning.adapters.layers import (
    SUPPORTED_LAST_LAYER_TYPES,
    LastLayerError,
    apply_layer,
    layer_parameters,
    original_module,
    resolve_last_layer,
    use_last_layer_weights,
)
from genunc_lightning.adapters.ldm import LatentDiffusionAdapter
from genunc_lightning.adapters.own_sampler import OwnSamplerAdapter
from genunc_lightning.adapters.sgm import SGMAdapter
from genunc_lightning.data.batches import unpack_batch

__all__ = [
    "SGMAdapter",
    "SUPPORTED_LAST_LAYER_TYPES",
    "DenoiserCallError",
    "DiffusersAdapter",
    "DiffusersPipelineAdapter",
    "DiffusionAdapter",
    "FlowMatchingAdapter",
    "GaussianDiffusionAdapter",
    "LastLayerError",
    "LatentDiffusionAdapter",
    "OwnSamplerAdapter",
    "alphas_cumprod",
    "apply_layer",
    "layer_parameters",
    "original_module",
    "resolve_last_layer",
    "unpack_batch",
    "use_last_layer_weights",
]
