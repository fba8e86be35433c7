"""Per-example seeds and generators.

Every random draw in the package (a training example's (t, ε), a sample's initial noise and
sampler noise) comes from a generator seeded for that example alone. A result is then a pure
function of its seed, whatever the batch, the rank or the world size (NVlabs/edm seeds the same
way). Generators on different device types produce different streams: results are reproducible
per device type.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def derive_seed(*parts: int) -> int:
    """Mixes integers into one well-spread 63-bit seed (SplitMix64 chained over the parts).

    Args:
        *parts: integers such as a base seed, an example index and a stream number.

    Returns:
        A non-negative seed below 2**63.

    Example:
        >>> derive_seed(0, 1) != derive_seed(1, 0)
        True
    """
    state = 0
    for part in parts:
        state = _splitmix64(state ^ (int(part) & _MASK64))
    return state >> 1


def example_seeds(base_seed: int, indices: torch.Tensor | Sequence[int], stream: int = 0) -> torch.Tensor:
    """Seeds for a batch of examples, each a function of (base_seed, index, stream) only.

    Args:
        base_seed: the run's seed.
        indices: dataset indices of the examples.
        stream: separates independent uses of the same index (e.g. several (t, ε) draws).

    Returns:
        A LongTensor of seeds, one per index.
    """
    values = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
    return torch.tensor([derive_seed(base_seed, i, stream) for i in values], dtype=torch.long)


def generators(seeds: torch.Tensor | Sequence[int], device: torch.device | str) -> list[torch.Generator]:
    """One freshly seeded generator per seed, on ``device``."""
    values = seeds.tolist() if isinstance(seeds, torch.Tensor) else list(seeds)
    out = []
    for s in values:
        g = torch.Generator(device=device)
        g.manual_seed(int(s))
        out.append(g)
    return out


def randn(
    gens: Sequence[torch.Generator],
    shape: Sequence[int],
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal draws, one tensor of ``shape`` per generator, stacked on dim 0."""
    return torch.stack([torch.randn(tuple(shape), generator=g, device=device, dtype=dtype) for g in gens])


def rand(
    gens: Sequence[torch.Generator], device: torch.device | str, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """One uniform [0, 1) draw per generator."""
    return torch.stack([torch.rand((), generator=g, device=device, dtype=dtype) for g in gens])


def randint(gens: Sequence[torch.Generator], high: int, device: torch.device | str) -> torch.Tensor:
    """One integer draw in [0, high) per generator."""
    return torch.stack([torch.randint(high, (), generator=g, device=device) for g in gens])
