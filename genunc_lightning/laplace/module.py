"""The LightningModule of the Fisher pass: one forward per example, gradients for the last layer only."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import move_data_to_device
from lightning_utilities.core.apply_func import apply_to_collection

from genunc_lightning.adapters.base import DiffusionAdapter
from genunc_lightning.interrupts import StopsOnSigterm
from genunc_lightning.laplace.fisher import FisherBatch, fisher_batch
from genunc_lightning.seeding import example_seeds


class LaplaceFitModule(StopsOnSigterm, LightningModule):
    """Computes each batch's diagonal-Fisher contribution in ``predict_step``.

    Run it with ``Trainer.predict`` over an indexed training subset (batches ``{"index": …,
    "data": …}``, see ``genunc_lightning.data.IndexedSubset``) together with
    ``FisherAccumulationCallback``, which sums the contributions across batches and ranks and
    writes the posterior. The predict loop's sampler never repeats an example under DDP, and every
    example's (t, ε) draws come from seeds derived from its dataset index, so the result does not
    depend on the world size or the batch size.

    Args:
        adapter: the pretrained model.
        checkpoint: weights to load into the adapter first (Lightning checkpoint, state dict or
            safetensors); ``None`` keeps the adapter's current weights.
        draws_per_example: (t, ε) draws per example, averaged in the Fisher.
        seed: base seed of the draws.
    """

    def __init__(
        self,
        adapter: DiffusionAdapter,
        checkpoint: str | None = None,
        draws_per_example: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if draws_per_example < 1:
            raise ValueError(f"draws_per_example must be at least 1, got {draws_per_example}.")
        self.adapter = adapter
        if checkpoint is not None:
            adapter.load_weights(checkpoint)
        adapter.check_last_layer_reached()
        self.draws_per_example = draws_per_example
        self.seed = seed

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> FisherBatch:
        """Fisher contribution of one batch of ``{"index", "data"}``."""
        if not isinstance(batch, dict) or "index" not in batch or "data" not in batch:
            raise TypeError(
                "LaplaceFitModule needs batches {'index': LongTensor, 'data': batch}: wrap the dataset in "
                "genunc_lightning.data.IndexedSubset (DiffusionDataModule does this for predict)."
            )
        indices = batch["index"]
        seeds = [example_seeds(self.seed, indices, stream=k) for k in range(self.draws_per_example)]
        # The predict loop may run under inference mode; the Fisher needs autograd, so leave it
        # and clone the batch out of inference tensors.
        with torch.inference_mode(False):
            data = apply_to_collection(batch["data"], torch.Tensor, torch.clone)
            data = move_data_to_device(data, self.device)
            out = fisher_batch(self.adapter, data, seeds)
        if not torch.isfinite(out.losses).all():
            bad = indices[~torch.isfinite(out.losses.cpu()).all(0)].tolist()
            raise FloatingPointError(
                f"Non-finite diffusion loss in batch {batch_idx} (dataset indices {bad[:10]}): check the "
                "checkpoint and the data scaling."
            )
        return out
