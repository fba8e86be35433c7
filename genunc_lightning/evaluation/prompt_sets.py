"""Ranking within prompts, with no reference set: each prompt's samples ordered, rejected, and its best of N.

A text-to-image user has prompts, not a reference distribution. For each prompt (a run's ``class``
column: the prompt's position; for class-conditional runs the class, for unconditional runs one
group), the samples are ranked by each score, the most uncertain are rejected (a fraction of each
prompt's samples, or a threshold on the score), and the least uncertain is the prompt's best of N.
Pure functions of the table's columns; ``Evaluation`` writes the files.
"""

from __future__ import annotations

import math

import torch


def ranks_within_groups(values: torch.Tensor, groups: torch.Tensor, higher_is_better: bool = False) -> torch.Tensor:
    """Each sample's rank within its group, 0 for the best (ties by position, so the result is deterministic)."""
    ranks = torch.empty(len(values), dtype=torch.long)
    for g in groups.unique():
        members = (groups == g).nonzero().flatten()
        order = torch.sort(values[members].double(), descending=higher_is_better, stable=True).indices
        ranks[members[order]] = torch.arange(len(members))
    return ranks


def rejected(
    values: torch.Tensor,
    groups: torch.Tensor,
    fraction: float | None = None,
    threshold: float | None = None,
    higher_is_better: bool = False,
) -> torch.Tensor:
    """Which samples to reject: the worst ``ceil(fraction · n_g)`` of each group, or those beyond ``threshold``.

    Args:
        values: one score per sample.
        groups: each sample's group (prompt).
        fraction: the share of each group's samples to reject, in [0, 1).
        threshold: reject samples whose score is above it (below it where higher is better).
        higher_is_better: the score's direction (realism: higher is better; uncertainty: lower is).

    Raises:
        ValueError: neither or both of ``fraction`` and ``threshold``, or a fraction outside [0, 1).
    """
    if (fraction is None) == (threshold is None):
        raise ValueError("Reject by a fraction of each prompt's samples or by a threshold on the score, one of them.")
    if threshold is not None:
        return values < threshold if higher_is_better else values > threshold
    if not 0 <= fraction < 1:
        raise ValueError(f"The rejected fraction must be in [0, 1), got {fraction}.")
    ranks = ranks_within_groups(values, groups, higher_is_better)
    sizes = {int(g): int((groups == g).sum()) for g in groups.unique()}
    kept = torch.tensor([sizes[int(g)] - math.ceil(fraction * sizes[int(g)]) for g in groups])
    return ranks >= kept


def best_of_n(values: torch.Tensor, groups: torch.Tensor, higher_is_better: bool = False) -> dict[int, int]:
    """Per group, the position of its best sample by the score."""
    ranks = ranks_within_groups(values, groups, higher_is_better)
    return {int(groups[i]): int(i) for i in (ranks == 0).nonzero().flatten()}
