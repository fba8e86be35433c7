"""The digits experiment's networks, their training module, and the encoders over their shipped weights.

Two small classifiers: one scores (the role CLIP plays in the paper), the other evaluates (Inception's).
They differ in architecture and training seed, so the network that scores is not the network that
evaluates.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn

from genunc_lightning.checkpoints import load_state_dict
from genunc_lightning.data.batches import unpack_batch
from genunc_lightning.encoders.extractors import FeatureExtractor, require_weights_file
from genunc_lightning.experiments.assets import asset_path


class DigitsCNN(nn.Module):
    """A small CNN for 8×8 digits; ``features`` are its 64-d penultimate activations."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(2 * width, 64), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(64, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features of images in [0, 1]."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.head(self.features(x))


class DigitsMLP(nn.Module):
    """An MLP on raw pixels for 8×8 digits; ``features`` are its penultimate activations (32-d by default).

    32 features keep FID's covariance well estimated at the experiment's kept-set size (K = 250).
    """

    def __init__(self, num_classes: int = 10, hidden: int = 256, features: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, features), nn.ReLU()
        )
        self.head = nn.Linear(features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features of images in [0, 1]."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.head(self.features(x))


class ClassifierTrainingModule(LightningModule):
    """Trains a classifier on images mapped to [0, 1] (the space the encoders see).

    Args:
        net: ``DigitsCNN``, ``DigitsMLP`` or any module returning logits.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        image_range: the data's range, mapped to [0, 1] before the network.
    """

    def __init__(
        self, net: nn.Module, lr: float = 1e-3, weight_decay: float = 1e-4, image_range: tuple[float, float] = (-1, 1)
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])  # the network is saved as weights, not pickled
        self.net, self.lr, self.weight_decay, self.image_range = net, lr, weight_decay, tuple(image_range)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Cross-entropy on [0, 1] images."""
        x, y = unpack_batch(batch)
        low, high = self.image_range
        logits = self.net((x - low) / (high - low))
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        self.log_dict({"train/loss": loss, "train/acc": acc}, prog_bar=True, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW."""
        return torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class DigitsFeatureEncoder(FeatureExtractor):
    """Penultimate features of a shipped (or given) digits classifier, for images in [0, 1].

    Args:
        architecture: ``cnn`` (``DigitsCNN``, the scorer of the demo) or ``mlp`` (``DigitsMLP``, the
            evaluator).
        weights_path: a safetensors or state-dict file; ``None`` uses the package's shipped weights
            (``digits_scorer_cnn.safetensors`` or ``digits_evaluator_mlp.safetensors``).
    """

    def __init__(self, architecture: str = "cnn", weights_path: str | None = None) -> None:
        super().__init__()
        nets = {
            "cnn": (DigitsCNN, "digits_scorer_cnn.safetensors"),
            "mlp": (DigitsMLP, "digits_evaluator_mlp.safetensors"),
        }
        if architecture not in nets:
            raise ValueError(f"architecture must be one of {sorted(nets)}, got {architecture!r}.")
        cls, shipped = nets[architecture]
        path = require_weights_file(
            weights_path if weights_path is not None else asset_path(shipped),
            f"the digits {architecture} classifier",
            "Pass weights_path=, or re-create the shipped file with `make assets`.",
        )
        self.net = cls()
        self.net.load_state_dict(load_state_dict(path, f"the digits {architecture} classifier"))
        self.net.eval().requires_grad_(False)
        self.architecture = architecture

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features [N, D] of [N, 1, 8, 8] images in [0, 1]."""
        return self.net.features(images)


class DigitsClassifier(DigitsFeatureEncoder):
    """The same shipped digits classifiers, returning class logits (for `genunc evaluate`'s off-class rate)."""

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits [N, 10] of [N, 1, 8, 8] images in [0, 1]."""
        return self.net(images)
