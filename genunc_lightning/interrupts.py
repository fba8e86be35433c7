"""Stopping a ``Trainer.predict`` run on SIGTERM, as Lightning's fit and evaluation loops do.

Lightning's SIGTERM handler only sets ``trainer.received_sigterm``, and its predict loop never reads it:
a Fisher pass or a scored-sampling run would ignore ``timeout``, ``docker stop``, Kubernetes and the
schedulers that stop jobs with SIGTERM. ``StopsOnSigterm`` checks the flag after every batch, once that
batch's outputs are written, and ends the run with ``SIGTERMException`` (exit status 143, 128 + SIGTERM),
so the same command then finishes what is missing, as after ``kill -9``.
"""

from __future__ import annotations

import signal
from typing import Any

from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


class StopsOnSigterm:
    """LightningModule mixin: a predict run stops after the batch during which SIGTERM arrived."""

    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Ends the run with ``SIGTERMException`` once SIGTERM was received (callbacks have written the batch)."""
        if getattr(self.trainer, "received_sigterm", False):
            rank_zero_info(
                f"SIGTERM received: stopping after batch {batch_idx}. Run the same command again to finish; what was "
                "written is kept."
            )
            raise SIGTERMException(SIGTERM_EXIT_CODE)
