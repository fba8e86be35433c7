"""One data module for training (`genunc fit`) and for the Fisher pass (`genunc fit_laplace`)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset


def fraction_or_count(value: int | float, total: int, name: str) -> int:
    """How many of ``total``: ``value`` is a fraction in (0, 1] (a float) or a count (an int).

    A whole float above 1 counts as a count: config parsers may deliver ``1000`` as ``1000.0``. The
    caller checks the count's bounds.

    Raises:
        ValueError: not a number, or a fraction outside (0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a fraction in (0, 1] or a count, got {value!r}.")
    if isinstance(value, float) and value > 1 and value.is_integer():
        value = int(value)
    if isinstance(value, float):
        if not 0.0 < value <= 1.0:
            raise ValueError(
                f"{name} fraction {value} is outside (0, 1]: pass a fraction such as 0.01, or a whole count."
            )
        return round(value * total)
    return value


def subset_indices(dataset_size: int, subset: int | float, seed: int = 0) -> torch.Tensor:
    """Indices of a random training subset, sorted.

    Args:
        dataset_size: N.
        subset: a fraction in (0, 1] of the dataset (a float), or a count in [1, N] (an int).
        seed: the subset's random seed.

    Raises:
        ValueError: the fraction is outside (0, 1] or the count outside [1, N].
    """
    count = fraction_or_count(subset, dataset_size, "subset")
    if isinstance(subset, float) and subset <= 1.0:
        count = max(1, count)  # a tiny fraction still takes one example
    elif not 1 <= count <= dataset_size:
        raise ValueError(f"subset count {count} is outside [1, {dataset_size}], the dataset's size.")
    if count == dataset_size:
        return torch.arange(dataset_size)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(dataset_size, generator=g)[:count].sort().values


class IndexedSubset(Dataset):
    """Items ``{"index": i, "data": dataset[i]}`` for the chosen indices of ``dataset``."""

    def __init__(self, dataset: Dataset, indices: torch.Tensor | None = None) -> None:
        self.dataset = dataset
        self.indices = indices if indices is not None else torch.arange(len(dataset))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = int(self.indices[i])
        return {"index": index, "data": self.dataset[index]}


class DiffusionDataModule(LightningDataModule):
    """Wraps a dataset: shuffled batches to train on, an indexed subset to fit the posterior on.

    Args:
        dataset: a map-style dataset whose items are a tensor, ``(x, y)`` or a dict.
        batch_size: batch size for both stages.
        subset: the Fisher pass's training subset: a fraction in (0, 1] or a count.
        subset_seed: seed of the subset's random choice.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 256,
        subset: int | float = 1.0,
        subset_seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.batch_size = batch_size
        self.subset = subset
        self.subset_seed = subset_seed
        self.num_workers = num_workers
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise ValueError(
                f"The dataset ({type(dataset).__name__}) is empty: there is nothing to train on or fit the posterior "
                "on. Check the data's path or settings."
            )
        self.subset_indices = subset_indices(len(dataset), subset, subset_seed)  # type: ignore[arg-type]

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=len(self.dataset) > self.batch_size,  # type: ignore[arg-type]
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def predict_dataloader(self) -> DataLoader:
        """The indexed training subset, in order (the Fisher pass)."""
        return DataLoader(
            IndexedSubset(self.dataset, self.subset_indices),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )
