"""DiffusionTrainingModule: plain training of any adapter's denoiser (`genunc fit`)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch.optim.swa_utils import AveragedModel

from genunc_lightning.adapters.base import DiffusionAdapter
from genunc_lightning.data.batches import unpack_batch


def ema_decay_at(step: int, decay: float, warmup_power: float | None = None) -> float:
    """The EMA decay after ``step`` optimiser steps (``step`` ≥ 1), with k-diffusion's optional warm-up."""
    if warmup_power is None:
        return decay
    return min(decay, 1.0 - (1.0 + step) ** -warmup_power)


class DiffusionTrainingModule(LightningModule):
    """Trains ``adapter.denoiser`` on the adapter's own loss, with an optional EMA copy.

    The checkpoint holds ``adapter.denoiser.*`` (the trained weights) and, with ``ema_decay``,
    ``ema.module.*`` (torch's ``AveragedModel``); ``DiffusionAdapter.load_weights`` prefers the EMA weights.

    Args:
        adapter: the model family and its denoiser.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        ema_decay: exponential moving average of the weights, or ``None``.
        warmup_steps: linear learning-rate warm-up.
        ema_warmup_power: k-diffusion's EMA warm-up: the decay at optimiser step t is
            ``min(ema_decay, 1 − (1 + t)^−power)``, so a short run's average forgets its random
            initialisation (3/4 reaches 0.999 after 10K steps). ``None`` keeps ``ema_decay`` throughout.
    """

    def __init__(
        self,
        adapter: DiffusionAdapter,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        ema_decay: float | None = None,
        warmup_steps: int = 0,
        ema_warmup_power: float | None = None,
    ) -> None:
        super().__init__()
        # The scalar settings go into every checkpoint (the adapter is saved as weights, not pickled).
        self.save_hyperparameters(ignore=["adapter"])
        self.adapter = adapter
        self.lr = lr
        self.weight_decay = weight_decay
        self.ema_decay = ema_decay
        self.warmup_steps = warmup_steps
        self.ema_warmup_power = ema_warmup_power
        self.ema = None
        if ema_decay:
            # torch's AveragedModel with k-diffusion's decay schedule. The first update (here) copies the
            # initial weights, so the average starts from them; n_averaged is then the optimiser step.
            self.ema = AveragedModel(adapter.denoiser, avg_fn=self._ema_average)
            self.ema.update_parameters(adapter.denoiser)
            self.ema.requires_grad_(False)

    def _ema_average(self, averaged: torch.Tensor, current: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        decay = ema_decay_at(int(step), self.ema_decay, self.ema_warmup_power)
        return torch.lerp(averaged, current, 1.0 - decay)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Mean per-example loss ½‖prediction − target‖² divided by the data dimension."""
        x, _ = unpack_batch(batch)
        seeds = torch.randint(0, 2**62, (x.shape[0],))
        loss = self.adapter.loss(batch, seeds).mean() / x[0].numel()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Updates the EMA weights."""
        if self.ema is not None:
            self.ema.update_parameters(self.adapter.denoiser)

    def configure_optimizers(self) -> Any:
        """AdamW with an optional linear warm-up."""
        opt = torch.optim.AdamW(self.adapter.denoiser.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if not self.warmup_steps:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / self.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
