"""scikit-learn's 8×8 digits as a Dataset, with the fixed splits of the digits experiment."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

# Positions in one seeded permutation of the 1,797 digits (docs/digits_experiment_rules.md §1). The
# diffusion model trains on `train`; the scorer and the evaluator on its two disjoint halves; nothing
# trains on `heldout` = `reference` + `calibration`.
SPLITS = {
    "train": (0, 1000),
    "train_scorer": (0, 500),
    "train_evaluator": (500, 1000),
    "heldout": (1000, 1797),
    "reference": (1000, 1400),
    "calibration": (1400, 1797),
}


class DigitsDataset(Dataset):
    """Digits as ``(image, label)`` with images [1, 8, 8] scaled from 0…16 to [-1, 1].

    Args:
        split: ``all``, or one of the experiment's splits: ``train`` (1,000 images), its halves
            ``train_scorer`` and ``train_evaluator``, ``heldout`` (797), and its parts ``reference``
            (400) and ``calibration`` (397).
        seed: seed of the permutation the splits cut.
    """

    def __init__(self, split: str = "all", seed: int = 0) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        if split != "all":
            if split not in SPLITS:
                raise ValueError(f"split must be 'all' or one of {sorted(SPLITS)}, got {split!r}.")
            start, stop = SPLITS[split]
            keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[start:stop]
            images, labels = images[keep], labels[keep]
        self.split = split
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]
