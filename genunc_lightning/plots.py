"""Report plots (matplotlib, no display); every file is written atomically."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from genunc_lightning.io import atomic_path


def _figure(ncols: int = 1, width: float = 4.5, height: float = 3.5, nrows: int = 1):  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)


def _save(plt, fig, path: Path) -> None:  # noqa: ANN001
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def metric_sweep(sweep: dict[str, list[dict]], random: dict | None, path: Path) -> None:
    """FID, precision and recall of the kept set against the kept fraction, one line per method."""
    plt, fig, axes = _figure(3)
    for ax, metric in zip(axes[0], ("fid", "precision", "recall"), strict=True):
        for name, rows in sweep.items():
            ax.plot([r["fraction"] for r in rows], [r[metric] for r in rows], marker="o", label=name)
        if random:
            ax.axhline(random[metric], color="gray", linestyle="--", label="random (at K)")
        ax.set_xlabel("kept fraction")
        ax.set_title(metric)
    axes[0][0].legend(fontsize=7)
    _save(plt, fig, path)


def best_and_worst(
    values: torch.Tensor, higher_is_better: bool, per_side: int = 25
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the best and the worst samples by a score, never the same sample on both sides.

    Each side holds ``min(per_side, N // 2)`` samples, so a run of fewer than 2·``per_side`` samples
    shows two disjoint halves rather than the same images twice.
    """
    order = torch.sort(values.double(), descending=higher_is_better, stable=True).indices
    count = min(per_side, len(order) // 2)
    return order[:count], order.flip(0)[:count]


def extremes(samples: torch.Tensor, values: torch.Tensor, higher_is_better: bool, path: Path, title: str) -> None:
    """Grids of the (up to 25) best and worst samples by a score (images), or a scatter coloured by it (2D).

    ``samples`` is a tensor or anything indexed like one by a tensor of positions, with ``shape`` and
    ``dim`` (a run's ``RunSamples``, which reads only the rows shown).
    """
    if samples.dim() == 4:
        from torchvision.utils import make_grid

        best, worst = best_and_worst(values, higher_is_better)
        plt, fig, axes = _figure(2, 4.5, 4.8)
        for ax, idx, label in ((axes[0][0], best, "best"), (axes[0][1], worst, "worst")):
            grid = make_grid(samples[idx].float().clamp(0, 1), nrow=5, padding=1)
            ax.imshow(grid.permute(1, 2, 0).numpy())
            ax.set_title(f"{title}: {len(idx)} {label}")
            ax.axis("off")
    elif samples.dim() == 2 and samples.shape[1] == 2:
        plt, fig, axes = _figure(1, 5, 4.5)
        finite = torch.isfinite(values)
        v = values.double().clone()
        v[~finite] = v[finite].max() if finite.any() else 0.0
        xy = samples[torch.arange(len(values))]  # a run's samples may be read from its shards only now
        points = axes[0][0].scatter(xy[:, 0], xy[:, 1], c=v.numpy(), s=2, cmap="viridis")
        fig.colorbar(points, ax=axes[0][0])
        axes[0][0].set_title(f"samples coloured by {title}")
    else:
        return
    _save(plt, fig, path)


def gallery(images: torch.Tensor, values: torch.Tensor, caption: str, path: Path, columns: int = 8) -> None:
    """One prompt's samples in the order given (best first), each titled with its score, the prompt above."""
    import textwrap

    columns = max(1, min(columns, len(images)))
    rows = max(1, math.ceil(len(images) / columns))
    plt, fig, axes = _figure(columns, 1.3, 1.6, nrows=rows)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, value in zip(axes.flat, images, values, strict=False):
        picture = image.float().clamp(0, 1).permute(1, 2, 0).numpy()
        ax.imshow(
            picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray" if picture.shape[-1] == 1 else None
        )
        ax.set_title(f"{float(value):.4g}", fontsize=7)
    fig.suptitle(textwrap.shorten(caption, 120), fontsize=8)
    _save(plt, fig, path)


def class_means(means: dict[str, dict[int, float]], path: Path) -> None:
    """Mean score per class, one panel per score."""
    plt, fig, axes = _figure(len(means), 4.0, 3.0)
    for ax, (name, per_class) in zip(axes[0], means.items(), strict=True):
        ax.bar([str(c) for c in per_class], list(per_class.values()))
        ax.set_title(f"class-averaged {name}")
        ax.set_xlabel("class")
    _save(plt, fig, path)


def correlations(table: dict[str, dict[str, float]], path: Path) -> None:
    """Spearman correlations between scores as a heatmap."""
    names = list(table)
    plt, fig, axes = _figure(1, 1.2 * len(names) + 2, 1.0 * len(names) + 1.5)
    ax = axes[0][0]
    matrix = [[table[a][b] for b in names] for a in names]
    im = ax.imshow(matrix, vmin=-1, vmax=1, cmap="coolwarm")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{matrix[i][j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax)
    ax.set_title("Spearman correlation")
    _save(plt, fig, path)
