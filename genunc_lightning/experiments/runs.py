"""The experiments' building blocks: a Trainer, a posterior fit, a scored predict run, shipped weights."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer


def _trainer(**kwargs: Any) -> Trainer:
    defaults = dict(accelerator="auto", devices=1, logger=False, enable_model_summary=False, enable_checkpointing=False)
    return Trainer(**{**defaults, **kwargs})


def fit_posterior(adapter: Any, dataset: Any, batch_size: int = 500) -> Any:
    """The `auto`-scale posterior over the whole dataset (one Fisher pass)."""
    from genunc_lightning.data import DiffusionDataModule
    from genunc_lightning.laplace import FisherAccumulationCallback, LaplaceFitModule

    callback = FisherAccumulationCallback(output=None)
    _trainer(callbacks=[callback], inference_mode=False, enable_progress_bar=False).predict(
        LaplaceFitModule(adapter),
        datamodule=DiffusionDataModule(dataset, batch_size=batch_size),
        return_predictions=False,
    )
    return callback.posterior


def scored_run(
    out_dir: Path,
    adapter: Any,
    posterior: Any,
    likelihoods: list,
    num_samples: int,
    batch_size: int,
    num_classes: int | None = None,
    seed: int = 0,
    **module_kwargs: Any,
) -> tuple[dict[str, torch.Tensor], float]:
    """One `genunc predict` run into ``out_dir`` (data seed ``seed``); returns the scores table and the wall time."""
    from genunc_lightning.data import SeedDataModule
    from genunc_lightning.uncertainty import GenerativeUncertaintyModule, ScoredSampleWriter, read_scores

    module = GenerativeUncertaintyModule(adapter, posterior, likelihoods, **module_kwargs)
    start = time.perf_counter()
    _trainer(callbacks=[ScoredSampleWriter(str(out_dir), replace_other_run=True)]).predict(
        module, datamodule=SeedDataModule(num_samples, batch_size, seed=seed, num_classes=num_classes),
        return_predictions=False,
    )  # fmt: skip
    return read_scores(out_dir), time.perf_counter() - start


def load_adapter(adapter: Any, asset: str) -> Any:
    """``adapter`` with a shipped asset's weights, in eval mode."""
    from genunc_lightning.experiments.assets import asset_path

    adapter.load_weights(asset_path(asset))
    return adapter.eval()
