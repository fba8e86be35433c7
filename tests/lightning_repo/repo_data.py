"""The repository's dataset: 8×8 [0, 1] images as (image, label) pairs (scikit-learn's digits)."""

import torch
from sklearn.datasets import load_digits


class Digits(torch.utils.data.TensorDataset):
    def __init__(self, limit=None):
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
        labels = torch.tensor(digits.target)
        super().__init__(images[:limit], labels[:limit])
