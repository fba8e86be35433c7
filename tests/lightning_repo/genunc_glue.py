"""All the glue genunc-lightning needs for this repository."""

from genunc_lightning.adapters import OwnSamplerAdapter


class PixelDiffusionAdapter(OwnSamplerAdapter):
    def preprocess(self, x):
        return x * 2 - 1  # as PixelDiffusion.training_step does
