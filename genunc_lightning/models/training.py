"""DiffusionTrainingModule: plain training of any adapter's denoiser (`genunc fit`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.optim.swa_utils import AveragedModel

from genunc_lightning.adapters.base import DiffusionAdapter
from genunc_lightning.data.batches import unpack_batch
from genunc_lightning.io import atomic_path


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


class WeightSnapshots(Callback):
    """Saves the denoiser's weights (the EMA's where there is one) after chosen numbers of optimiser steps.

    One run then gives the models of several training lengths: with a learning rate that is constant
    after its warm-up, the weights after S steps are those of a run of S steps.

    Args:
        steps: the optimiser steps after which to save.
        dirpath: where to write ``<filename>_s<step>.safetensors`` (atomically).
        filename: the files' stem.
    """

    def __init__(self, steps: list[int], dirpath: str, filename: str = "denoiser") -> None:
        if not steps or any(int(s) < 1 for s in steps):
            raise ValueError(f"steps must be positive optimiser steps, got {steps!r}.")
        self.steps, self.dirpath, self.filename = sorted({int(s) for s in steps}), Path(dirpath), filename

    def path(self, step: int) -> Path:
        """The file of the snapshot after ``step`` steps."""
        return self.dirpath / f"{self.filename}_s{step}.safetensors"

    def _save(self, module: LightningModule, step: int) -> None:
        from safetensors.torch import save_file

        network = module.ema.module if getattr(module, "ema", None) is not None else module.adapter.denoiser
        weights = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
        with atomic_path(self.path(step)) as tmp:
            save_file(weights, str(tmp))

    # The module updates its EMA in its own on_train_batch_end, which Lightning calls after the callbacks':
    # the weights after S steps are read at the start of batch S + 1, or at the end of training.
    def on_train_batch_start(self, trainer: Trainer, module: LightningModule, batch: Any, batch_idx: int) -> None:
        """Saves the weights after the previous batch's step, if it is one of ``steps``."""
        if trainer.global_step in self.steps and trainer.is_global_zero:
            self._save(module, trainer.global_step)

    def on_train_end(self, trainer: Trainer, module: LightningModule) -> None:
        """Saves the final weights, if the last step is one of ``steps``."""
        if trainer.global_step in self.steps and trainer.is_global_zero:
            self._save(module, trainer.global_step)
