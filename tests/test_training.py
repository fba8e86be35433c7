"""DiffusionTrainingModule: the EMA and its warm-up."""

import pytest
import torch
from lightning.pytorch import Trainer

from genunc_lightning.adapters import GaussianDiffusionAdapter
from genunc_lightning.data import DiffusionDataModule, GaussianGrid2D
from genunc_lightning.models import DiffusionTrainingModule, MLPDenoiser
from genunc_lightning.models.training import ema_decay_at


def test_ema_decay_follows_the_k_diffusion_warmup():
    # k-diffusion's EMAWarmup with inv_gamma = 1: 1 − (1 + t)^−power, capped at the final decay.
    assert ema_decay_at(1, 0.999, 0.75) == pytest.approx(1 - 2**-0.75, rel=1e-15)
    assert ema_decay_at(99, 0.999, 0.75) == pytest.approx(1 - 100**-0.75, rel=1e-15)
    assert ema_decay_at(10**5, 0.999, 0.75) == 0.999  # 1 − (1e5)^−0.75 ≈ 0.99982 is capped
    assert ema_decay_at(3, 0.9) == 0.9


@pytest.mark.parametrize("power", [None, 0.75])
def test_ema_after_two_steps_is_the_expected_average(power):
    torch.manual_seed(0)
    adapter = GaussianDiffusionAdapter(MLPDenoiser(hidden=16, depth=1), "out", (2,), steps=5)
    module = DiffusionTrainingModule(adapter, lr=0.05, ema_decay=0.9, ema_warmup_power=power)
    initial = [p.detach().clone() for p in adapter.denoiser.parameters()]
    seen: list[list[torch.Tensor]] = []  # the weights after each optimiser step
    trainer = Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    original = module.on_train_batch_end

    def spy(*args):
        seen.append([p.detach().clone() for p in adapter.denoiser.parameters()])
        original(*args)

    module.on_train_batch_end = spy
    trainer.fit(module, datamodule=DiffusionDataModule(GaussianGrid2D(num_points=64, seed=0), batch_size=32))
    assert len(seen) == 2
    expected = initial
    for step, weights in enumerate(seen, start=1):
        decay = ema_decay_at(step, 0.9, power)
        expected = [e + (1 - decay) * (w - e) for e, w in zip(expected, weights, strict=True)]
    for e, got in zip(expected, module.ema.parameters(), strict=True):
        torch.testing.assert_close(got, e, rtol=1e-6, atol=1e-7)
