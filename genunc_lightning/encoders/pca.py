"""A label-free feature space: the leading principal components of the pixels of a reference set."""

from __future__ import annotations

import torch

from genunc_lightning.encoders.extractors import FeatureExtractor


class PixelPCA(FeatureExtractor):
    """Projects images onto the leading principal components of a set of images (no labels, no training loop).

    Fitted by an SVD of the centred pixels in float64. Use it as a second evaluation space beside a
    trained network's: it cannot share a trained scorer's blind spots.

    Args:
        images: the images to fit on [N, C, H, W] (or [N, D]), in the range samples are given in.
        components: how many leading components to keep.
    """

    def __init__(self, images: torch.Tensor, components: int = 16) -> None:
        super().__init__()
        flat = images.flatten(1).double()
        if not 1 <= components <= min(flat.shape):
            raise ValueError(
                f"components must be in 1…{min(flat.shape)} for {tuple(flat.shape)} data, got {components}."
            )
        mean = flat.mean(0)
        _, singular, vh = torch.linalg.svd(flat - mean, full_matrices=False)
        basis = vh[:components]
        # An SVD's signs are arbitrary: fix each component's largest entry positive, for the same features everywhere.
        basis = basis * torch.sign(basis.gather(1, basis.abs().argmax(1, keepdim=True)))
        self.register_buffer("mean", mean)
        self.register_buffer("basis", basis)
        self.explained_variance_ratio = (singular[:components] ** 2 / (singular**2).sum()).tolist()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The [N, components] coordinates of images in the fitted principal subspace (float32)."""
        return ((images.flatten(1).double() - self.mean) @ self.basis.T).float()
