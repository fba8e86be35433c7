"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from lightning.pytorch import LightningModule


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 7, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs (CUDA-synchronised)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def describe_device(device: torch.device) -> str:
    """A one-line description of the device the figures come from."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU, {torch.get_num_threads()} threads (torch {torch.__version__})"


def report(title: str, rows: list[dict], columns: Sequence[tuple[str, str, str]], json_path: str | None) -> None:
    """Prints ``rows`` as a fixed-width table of ``columns`` (key, header, format spec); writes them as JSON."""
    widths = [max(len(header), 8) for _, header, _ in columns]
    print(title)
    print(" ".join(f"{header:>{w}}" for (_, header, _), w in zip(columns, widths, strict=True)))
    for r in rows:
        print(" ".join(f"{r[key]:>{w}{spec}}" for (key, _, spec), w in zip(columns, widths, strict=True)))
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=2))


SIZES = {
    # A digits/CIFAR-scale UNet for the CPU.
    "small": dict(shape=(3, 32, 32), unet=dict(in_channels=3, base_channels=32, channel_mults=(1, 2, 2)), batch=32),
    # ADM-128-sized: 256 base channels, mults (1, 1, 2, 3, 4), 2 res blocks, learned sigma, so the
    # last layer is ADM's `out.2` (3x3 conv 256 -> 6). No attention blocks.
    "adm128": dict(
        shape=(3, 128, 128),
        unet=dict(in_channels=3, base_channels=256, channel_mults=(1, 1, 2, 3, 4), num_res_blocks=2, learn_sigma=True),
        batch=16,
    ),
}


class SyntheticScoredSamples(LightningModule):
    """A predict run without a model: uniform random samples of ``shape`` and one score, seeded per batch.

    Through the real ``ScoredSampleWriter`` it writes a run directory of any size in the time it takes to
    draw the numbers (for evaluate's memory test and benchmark).
    """

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def manifest_entry(self) -> dict:
        return {"class": type(self).__name__, "shape": list(self.shape)}

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        index = batch["index"]
        g = torch.Generator().manual_seed(int(index[0]))
        return {"index": index, "seed": batch["seed"], "class": batch["class"],
                "scores": {"synthetic": torch.rand(len(index), generator=g, dtype=torch.float64)},
                "sample": torch.rand((len(index), *self.shape), generator=g)}  # fmt: skip


def write_synthetic_run(out_dir: str | Path, num_samples: int, shape: Sequence[int], batch_size: int = 64) -> Path:
    """A finished run directory of ``num_samples`` synthetic samples (see ``SyntheticScoredSamples``)."""
    from lightning.pytorch import Trainer

    from genunc_lightning.data import SeedDataModule
    from genunc_lightning.uncertainty import ScoredSampleWriter

    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[ScoredSampleWriter(str(out_dir))])  # fmt: skip
    trainer.predict(SyntheticScoredSamples(shape), datamodule=SeedDataModule(num_samples, batch_size),
                    return_predictions=False)  # fmt: skip
    return Path(out_dir)
