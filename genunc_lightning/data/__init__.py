"""Datasets and data modules: training data, indexed subsets for the Fisher pass, toy and digits data."""

from genunc_lightning.data.datamodule import DiffusionDataModule, IndexedSubset, subset_indices
from genunc_lightning.data.digits import DigitsDataset
from genunc_lightning.data.predict import PromptDataModule, PromptDataset, SeedDataModule, SeedDataset
from genunc_lightning.data.toy import GaussianGrid2D

__all__ = [
    "DiffusionDataModule",
    "DigitsDataset",
    "GaussianGrid2D",
    "IndexedSubset",
    "PromptDataModule",
    "PromptDataset",
    "SeedDataModule",
    "SeedDataset",
    "subset_indices",
]
