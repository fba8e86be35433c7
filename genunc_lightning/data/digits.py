"""scikit-learn's bundled 8×8 digits (1,797 images, no download) as a small image dataset."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class DigitsDataset(Dataset):
    """Digits as ``(image, label)`` with images [1, 8, 8] scaled from 0…16 to [-1, 1].

    Args:
        split: ``all``, ``train`` (first 80% of a seeded permutation) or ``test`` (the rest).
        seed: seed of the split's permutation.
    """

    def __init__(self, split: str = "all", seed: int = 0) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        if split != "all":
            if split not in ("train", "test"):
                raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}.")
            perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
            cut = int(0.8 * len(images))
            keep = perm[:cut] if split == "train" else perm[cut:]
            images, labels = images[keep], labels[keep]
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]
