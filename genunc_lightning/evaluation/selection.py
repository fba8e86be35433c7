"""Which samples a method keeps: pure functions over score columns, and the typed records of the methods."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

HIGHER_IS_BETTER = {"realism"}  # every other column: lower is better (uncertainty, rarity)
ORACLE = "oracle: on-class first"  # given a classifier: random kept sets that drop off-class samples first


@dataclass(frozen=True)
class Method:
    """A way of choosing the kept set: one score column, or the rank sum of several.

    Attributes:
        columns: the score columns it ranks by (one for a score, several for a combination).
        class_balanced: keep the best within each class, each class its share of K.
    """

    columns: tuple[str, ...]
    class_balanced: bool = False

    @property
    def is_combination(self) -> bool:
        """Whether it sums the ranks of several columns."""
        return len(self.columns) > 1

    @property
    def label(self) -> str:
        """Its name in reports: ``semantic``, ``semantic + realism``, ``semantic (class-balanced)``."""
        name = " + ".join(self.columns)
        return f"{name} (class-balanced)" if self.class_balanced else name

    def ranking(self, columns: dict[str, torch.Tensor]) -> tuple[torch.Tensor, bool]:
        """(values, higher_is_better) that order the samples for this method."""
        if self.is_combination:
            return combined_ranks(columns, self.columns).double(), False
        return columns[self.columns[0]], self.columns[0] in HIGHER_IS_BETTER

    def keep(self, columns: dict[str, torch.Tensor], classes: torch.Tensor, k: int) -> torch.Tensor:
        """Positions of the ``k`` samples this method keeps."""
        values, higher = self.ranking(columns)
        return class_balanced_keep(values, classes, k, higher) if self.class_balanced else keep_best(values, k, higher)


def ordinal_ranks(values: torch.Tensor, higher_is_better: bool = False) -> torch.Tensor:
    """Rank 0 for the best value; ties keep index order (stable)."""
    order = torch.sort(values.double(), descending=higher_is_better, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(len(values))
    return ranks


def combined_ranks(columns: dict[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    """Sum of each column's ordinal ranks (lower = better on every column together)."""
    return sum(ordinal_ranks(columns[n], n in HIGHER_IS_BETTER) for n in names)


def keep_best(values: torch.Tensor, k: int, higher_is_better: bool = False) -> torch.Tensor:
    """Positions of the ``k`` best values."""
    return torch.sort(values.double(), descending=higher_is_better, stable=True).indices[:k]


def class_quotas(classes: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """Each class's share of ``k`` kept samples, in proportion to its count (largest remainders)."""
    labels, counts = classes.unique(return_counts=True)
    quota = counts.double() * k / len(classes)
    take = quota.floor().long()
    remainder = k - int(take.sum())
    take[torch.sort(quota - take, descending=True, stable=True).indices[:remainder]] += 1
    return list(zip(labels.tolist(), take.tolist(), strict=True))


def class_balanced_keep(
    values: torch.Tensor, classes: torch.Tensor, k: int, higher_is_better: bool = False
) -> torch.Tensor:
    """The best within each class, each class keeping its share of ``k`` (``class_quotas``)."""
    kept = []
    for label, n in class_quotas(classes, k):
        members = (classes == label).nonzero().flatten()
        kept.append(members[keep_best(values[members], n, higher_is_better)])
    return torch.cat(kept)


def class_balanced_random_kept_sets(
    classes: torch.Tensor, k: int, count: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """``count`` random kept sets that keep each class's share of ``k``, as ``class_balanced_keep`` does.

    The null of a class-balanced (for a prompt run: per-prompt best k of N) kept set.
    """
    quotas = class_quotas(classes, k)
    members = {label: (classes == label).nonzero().flatten() for label, _ in quotas}
    return [
        torch.cat([members[label][torch.randperm(len(members[label]), generator=generator)[:n]] for label, n in quotas])
        for _ in range(count)
    ]


def random_kept_sets(n: int, k: int, count: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``count`` random kept sets of ``k`` out of ``n``."""
    return [torch.randperm(n, generator=generator)[:k] for _ in range(count)]


def oracle_kept_sets(off: torch.Tensor, k: int, count: int, generator: torch.Generator) -> list[torch.Tensor]:
    """What a perfect failure detector keeps: random on-class samples first, then random off-class ones."""
    on_class, off_class = (~off).nonzero().flatten(), off.nonzero().flatten()
    return [
        torch.cat([s[torch.randperm(len(s), generator=generator)] for s in (on_class, off_class)])[:k]
        for _ in range(count)
    ]
