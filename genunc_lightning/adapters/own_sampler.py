"""Your sampler, unchanged: samples from a repository's own sampling method, with the last layer swapped in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from genunc_lightning.adapters.base import Condition, class_labels
from genunc_lightning.adapters.gaussian import GaussianDiffusionAdapter
from genunc_lightning.adapters.layers import LastLayerWeights, original_module, use_last_layer_weights
from genunc_lightning.seeding import derive_seed


class OwnSamplerAdapter(GaussianDiffusionAdapter):
    """A Gaussian-diffusion adapter around a whole module (e.g. your LightningModule) that samples with its own method.

    The Fisher pass uses the forward process and loss of ``GaussianDiffusionAdapter`` on the module's
    noise-prediction network ``network`` (the ``preprocess`` hook maps the data as the repository's
    ``training_step`` does). Samples come from the module's own ``sample_method``, called as
    ``method(batch_size)`` (or ``method(batch_size, classes)``), with the posterior's weight sets
    swapped into ``last_layer``. So the kept samples are exactly what your sampler produces.

    The sampler draws from the global random number generator, so the adapter forks that state and
    seeds it once per batch from the batch's sample seeds, and runs every weight set with that same
    seed: members share their randomness, as the method needs. The trade-off: a sample is
    reproducible for a given batch composition (the same seeds in the same batches), not on its own;
    a table then depends on the batch size and world size, which the built-in samplers do not.

    Args:
        denoiser: the module that holds the network and the sampling method (checkpoints load into it).
        last_layer: dotted name of the Bayesian layer inside ``denoiser`` (e.g. ``model.head``).
        sample_shape: shape of one sample.
        network: attribute of ``denoiser`` called as ``network(x_t, t)`` (``(x_t, t, y)`` with classes)
            in the Fisher pass.
        sample_method: attribute of ``denoiser`` that samples a batch; ``forward`` calls the module.
        steps: the steps the method runs (it chooses them; T' < T is not available).
        **gaussian: the forward process of the training loss (``schedule``, ``num_train_steps``,
            ``prediction``, ``image_range``, …), as ``GaussianDiffusionAdapter`` takes them. The method's
            samples must lie in ``image_range``.
    """

    applies_guidance = False  # the engine / the repository's method calls the network itself

    fixed_steps = True  # the repository's method decides its steps: members cannot use fewer
    loops_over_weight_sets = True  # each weight set runs the method from the same RNG state (see ``sample``)

    def __init__(
        self,
        denoiser: nn.Module,
        last_layer: str,
        sample_shape: Sequence[int],
        network: str = "model",
        sample_method: str = "forward",
        num_classes: int | None = None,
        steps: int = 50,
        **gaussian: Any,
    ) -> None:
        for attr in (network, sample_method):
            if not hasattr(original_module(denoiser), attr):
                raise AttributeError(f"{type(denoiser).__name__} has no attribute {attr!r} (network / sample_method).")
        self.network = network
        self.sample_method = sample_method
        super().__init__(denoiser, last_layer, sample_shape, num_classes=num_classes, steps=steps, **gaussian)

    def call_denoiser(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """``denoiser.<network>(x, t)``, or ``(x, t, y)`` with classes."""
        net = getattr(original_module(self.denoiser), self.network)
        return net(x, t) if y is None else net(x, t, y)

    def _sample_with_weights(
        self, seeds: torch.Tensor, classes: Condition | None, steps: int | None, weights: LastLayerWeights | None
    ) -> torch.Tensor:
        """Runs the repository's method once per weight set, each time from the same seeded RNG state.

        With M stacked weight sets the seeds hold M equal chunks (as ``GenerativeUncertaintyModule``
        passes them); chunk m is sampled with set m.
        """
        layer = self.last_layer_module
        if weights is None:
            return self._sample_batch(seeds, classes, None)
        own = next(iter(layer.parameters()))
        stacked = next(iter(weights.values())).dim() == own.dim() + 1
        if not stacked:
            return self._sample_batch(seeds, classes, weights)
        members = next(iter(weights.values())).shape[0]
        seed_chunks = seeds.chunk(members)
        class_chunks = classes.chunk(members) if classes is not None else [None] * members
        return torch.cat([
            self._sample_batch(seed_chunks[m], class_chunks[m], {k: v[m] for k, v in weights.items()})
            for m in range(members)
        ])  # fmt: skip

    def _sample_batch(self, seeds: torch.Tensor, classes: Condition | None, weights: LastLayerWeights | None):
        module = original_module(self.denoiser)
        method = getattr(module, self.sample_method) if self.sample_method != "forward" else self.denoiser
        device = next(module.parameters()).device
        batch_seed = derive_seed(*seeds.tolist())
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(batch_seed)
            with use_last_layer_weights(self.last_layer_module, weights):
                x = method(len(seeds)) if classes is None else method(len(seeds), class_labels(classes).to(device))
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != (len(seeds), *self.sample_shape):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"{type(module).__name__}.{self.sample_method}({len(seeds)}) returned {got}; expected a batch of "
                f"samples of shape {(len(seeds), *self.sample_shape)}."
            )
        return x
