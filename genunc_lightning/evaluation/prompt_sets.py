"""Ranking within prompts, with no reference set: each prompt's samples ordered, rejected, and its best of N.

A text-to-image user has prompts, not a reference distribution. For each prompt (a run's ``class``
column: the prompt's position; for class-conditional runs the class, for unconditional runs one
group), the samples are ranked by each score, the most uncertain are rejected (a fraction of each
prompt's samples, or a threshold on the score), and the least uncertain is the prompt's best of N.
Pure functions of the table's columns; ``Evaluation`` writes the files.
"""

from __future__ import annotations

import torch


def ranks_within_groups(values: torch.Tensor, groups: torch.Tensor, higher_is_better: bool = False) -> torch.Tensor:
    """Each sample's rank within its group, 0 for the best (ties by position, so the result is deterministic)."""
    ranks = torch.empty(len(values), dtype=torch.long)
    for g in groups.unique():
        members = (groups == g).nonzero().flatten()
        order = torch.sort(values[members].double(), descending=higher_is_better, stable=True).indices
        ranks[members[order]] = torch.arange(len(members))
    return ranks


def rejected_fraction(ranks: torch.Tensor, groups: torch.Tensor, fraction: float) -> torch.Tensor:
    """Which samples are among the worst ``ceil(fraction · n_g)`` of their group (``ranks`` as above).

    Raises:
        ValueError: a fraction outside [0, 1).
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"The rejected fraction must be in [0, 1), got {fraction}.")
    labels, sizes = groups.unique(return_counts=True)
    size = sizes[torch.searchsorted(labels, groups)]
    return ranks >= size - torch.ceil(fraction * size.double()).long()


def rejected_threshold(values: torch.Tensor, threshold: float, higher_is_better: bool = False) -> torch.Tensor:
    """Which samples' scores are beyond ``threshold``: above it, or below it where higher is better."""
    return values < threshold if higher_is_better else values > threshold


def best_of_n(ranks: torch.Tensor, groups: torch.Tensor) -> dict[int, int]:
    """Per group, the position of its best sample (rank 0)."""
    return {int(groups[i]): int(i) for i in (ranks == 0).nonzero().flatten()}
