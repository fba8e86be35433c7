"""Seed datasets for predict: sample index i -> (seed_i, class_i), independent of batch and rank."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from genunc_lightning.seeding import derive_seed

UNCONDITIONAL = -1
MAX_SAMPLES = 100_000_000


def missing_indices(index: Iterable[int] | torch.Tensor, num_samples: int) -> list[int]:
    """The indices of 0 … num_samples − 1 that ``index`` lacks, in order."""
    index = torch.as_tensor(list(index) if not isinstance(index, torch.Tensor) else index, dtype=torch.long)
    present = torch.zeros(num_samples, dtype=torch.bool)
    present[index[(index >= 0) & (index < num_samples)]] = True
    return (~present).nonzero().flatten().tolist()


def sample_class(seed: int, index: int, num_classes: int | None, classes: Sequence[int] | None) -> int:
    """The class of sample ``index``: from ``classes`` (cycled), drawn from ``seed``, or -1 (none)."""
    if classes:
        return int(classes[index % len(classes)])
    if num_classes:
        return derive_seed(seed, index, 1) % num_classes
    return UNCONDITIONAL


class SeedDataset(Dataset):
    """Items ``{"index", "seed", "class"}`` for sample indices ``0 … num_samples − 1`` not yet done.

    Args:
        num_samples: how many samples the run generates.
        seed: base seed; sample i's seed is ``derive_seed(seed, i)``.
        num_classes: draw a class per sample from the seed (class-conditional models).
        classes: or give the classes, cycled over the indices.
        skip: indices to leave out (already written by an earlier run).
    """

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        num_classes: int | None = None,
        classes: Sequence[int] | None = None,
        skip: Iterable[int] = (),
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}.")
        self.seed, self.num_classes, self.classes = seed, num_classes, list(classes) if classes else None
        self.indices = missing_indices(skip, num_samples)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.indices[i]
        return {
            "index": index,
            "seed": derive_seed(self.seed, index),
            "class": sample_class(self.seed, index, self.num_classes, self.classes),
        }


class SeedDataModule(LightningDataModule):
    """The predict data: which samples to generate, with which seeds and classes.

    ``skip_indices`` is set by ``ScoredSampleWriter`` before the loader is built, so a re-run only
    generates what is missing.

    Args:
        num_samples: how many samples.
        batch_size: samples per batch (results do not depend on it).
        seed: base seed of the samples' seeds and classes.
        num_classes: classes to draw from for a class-conditional model.
        classes: explicit classes, cycled over the indices (instead of drawing).
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        num_samples: int = 1000,
        batch_size: int = 64,
        seed: int = 0,
        num_classes: int | None = None,
        classes: list[int] | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
            if isinstance(value, bool) or not float(value).is_integer() or value < 1:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}.")
        num_samples, batch_size = int(num_samples), int(batch_size)
        if num_samples > MAX_SAMPLES:
            raise ValueError(
                f"num_samples={num_samples} is more than one run directory holds ({MAX_SAMPLES:.0e}: its index and "
                "table are kept in memory). Split the run over several output directories with different data seeds."
            )
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.num_classes, self.classes, self.num_workers = num_classes, classes, num_workers
        self.skip_indices: set[int] = set()

    def manifest_entry(self) -> dict[str, Any]:
        """What must match for two runs to share results (the count may grow)."""
        return {"seed": self.seed, "num_classes": self.num_classes, "classes": self.classes}

    def predict_dataloader(self) -> DataLoader:
        """The samples still to generate, in index order."""
        dataset = SeedDataset(self.num_samples, self.seed, self.num_classes, self.classes, self.skip_indices)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)


def read_prompts_file(path: str | Path) -> list[str]:
    """The prompts of a text file, one per line (blank lines skipped), with a clear error when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts_file {str(path)!r} does not exist: give a text file, one prompt per line.")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def prompts_fingerprint(prompts: Sequence[str]) -> str:
    """SHA-256 of a prompt list, in order (a run's identity records it; its file ``prompts.json`` holds the text)."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode()).hexdigest()


class PromptDataset(SeedDataset):
    """Items ``{"index", "seed", "class", "prompt"}``: sample i asks for prompt ``i // samples_per_prompt``.

    ``class`` is the prompt's position in the list, so shards, DDP and resumes carry one integer per
    sample as for class labels; sample i's seed is ``derive_seed(seed, i)`` as for ``SeedDataset``.
    """

    def __init__(
        self,
        prompts: Sequence[str],
        samples_per_prompt: int,
        seed: int = 0,
        negative_prompt: str | None = None,
        skip: Iterable[int] = (),
    ) -> None:
        super().__init__(len(prompts) * samples_per_prompt, seed, skip=skip)
        self.prompts, self.samples_per_prompt, self.negative_prompt = list(prompts), samples_per_prompt, negative_prompt

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.indices[i]
        position = index // self.samples_per_prompt
        item = {"index": index, "seed": derive_seed(self.seed, index), "class": position,
                "prompt": self.prompts[position]}  # fmt: skip
        if self.negative_prompt is not None:
            item["negative_prompt"] = self.negative_prompt
        return item


class PromptDataModule(SeedDataModule):
    """The predict data of a text model: N samples per prompt, each with its own seed.

    Sample i asks for prompt ``i // samples_per_prompt`` (so a prompt's samples are consecutive) with seed
    ``derive_seed(seed, i)``; its row in ``scores.csv`` has the prompt's position (``class``) and text
    (``prompt``). The prompt list's fingerprint is part of the run's identity.

    Args:
        prompts: the prompts (or ``prompts_file``: a text file, one prompt per line).
        samples_per_prompt: N, the samples drawn for each prompt.
        batch_size: samples per batch (results do not depend on it).
        seed: base seed of the samples' seeds.
        negative_prompt: the unconditional branch's prompt under guidance (``None``: the empty prompt).
        prompts_file: a text file of prompts, instead of ``prompts``.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        prompts: list[str] | None = None,
        samples_per_prompt: int = 4,
        batch_size: int = 8,
        seed: int = 0,
        negative_prompt: str | None = None,
        prompts_file: str | None = None,
        num_workers: int = 0,
    ) -> None:
        if (prompts is None) == (prompts_file is None):
            raise ValueError("Give the prompts either as prompts=[...] or as prompts_file=<one per line>, not both.")
        prompts = read_prompts_file(prompts_file) if prompts_file is not None else [str(p) for p in prompts]
        if not prompts:
            where = f"prompts_file {prompts_file!r} holds" if prompts_file is not None else "prompts is"
            raise ValueError(f"The prompt list is empty ({where} no prompt): give at least one prompt.")
        if isinstance(samples_per_prompt, bool) or not float(samples_per_prompt).is_integer() or samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be a positive whole number, got {samples_per_prompt!r}.")
        self.prompts, self.samples_per_prompt = prompts, int(samples_per_prompt)
        self.negative_prompt = negative_prompt
        super().__init__(len(prompts) * self.samples_per_prompt, batch_size, seed, num_workers=num_workers)

    def manifest_entry(self) -> dict[str, Any]:
        """What must match for two runs to share results: the prompts (by fingerprint), N, the seed."""
        return {"seed": self.seed, "prompts": prompts_fingerprint(self.prompts), "num_prompts": len(self.prompts),
                "samples_per_prompt": self.samples_per_prompt, "negative_prompt": self.negative_prompt}  # fmt: skip

    def predict_dataloader(self) -> DataLoader:
        """The samples still to generate, in index order."""
        dataset = PromptDataset(
            self.prompts, self.samples_per_prompt, self.seed, self.negative_prompt, self.skip_indices
        )
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)


def collate_check(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(index, seed, class) tensors of a predict batch, with a clear error for other batch types."""
    if not isinstance(batch, dict) or not {"index", "seed", "class"} <= set(batch):
        raise TypeError("Predict batches must be {'index', 'seed', 'class'}: use genunc_lightning.data.SeedDataModule.")
    return batch["index"], batch["seed"], batch["class"]
