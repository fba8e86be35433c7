"""The 2D toy of the paper (§4.1, after Aithal et al. 2024): 25 Gaussian modes on a 5×5 grid."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


def grid_modes(size: int = 5, spacing: float = 1.0) -> torch.Tensor:
    """Mode centres of a size×size grid centred on the origin, shape [size², 2]."""
    coords = (torch.arange(size, dtype=torch.float32) - (size - 1) / 2) * spacing
    return torch.cartesian_prod(coords, coords)


class GaussianGrid2D(Dataset):
    """Points from an equal mixture of Gaussians on a grid (modes 1 apart, std 0.1 by default).

    Args:
        num_points: dataset size.
        size: modes per side.
        spacing: distance between neighbouring modes.
        std: standard deviation of each mode.
        seed: the sample's seed.
    """

    def __init__(
        self, num_points: int = 10000, size: int = 5, spacing: float = 1.0, std: float = 0.1, seed: int = 0
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.modes = grid_modes(size, spacing)
        self.std = std
        which = torch.randint(len(self.modes), (num_points,), generator=g)
        self.points = self.modes[which] + std * torch.randn(num_points, 2, generator=g)

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.points[i]
