import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a missing weight file must fail fast, never reach for a hub

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# --- a tiny toy model, its posterior and predict runs (shared by the predict and reliability tests) ---


def _toy_model(tmp_path, hidden=32, seed=0, steps=8):
    from genunc_lightning.adapters import GaussianDiffusionAdapter
    from genunc_lightning.laplace import DiagonalLaplacePosterior, fisher_batch
    from genunc_lightning.models import MLPDenoiser
    from genunc_lightning.seeding import example_seeds

    torch.manual_seed(seed)
    model = MLPDenoiser(hidden=hidden, depth=2)
    adapter = GaussianDiffusionAdapter(model, "out", (2,), sampler="ddpm", steps=steps)
    x = torch.randn(64, 2)
    fb = fisher_batch(adapter, x, [example_seeds(0, range(64))])
    post = DiagonalLaplacePosterior.fit(model.out, "out", fb.diag, 64, float(fb.squared_residual_sum), fb.num_residuals)
    path = post.save(tmp_path / "posterior.safetensors")
    torch.save(model.state_dict(), tmp_path / "denoiser.pt")
    return adapter, path


def _predict(adapter, posterior, out_dir, num_samples=40, batch_size=16, devices=1, replace=False, **module_kwargs):
    from lightning.pytorch import Trainer

    from genunc_lightning.data import SeedDataModule
    from genunc_lightning.uncertainty import GenerativeUncertaintyModule, ScoredSampleWriter, read_scores

    module = GenerativeUncertaintyModule(adapter, str(posterior), **module_kwargs)
    writer = ScoredSampleWriter(str(out_dir), replace_other_run=replace)
    kwargs = dict(accelerator="cpu", devices=devices, logger=False, enable_progress_bar=False)
    if devices > 1:
        kwargs["strategy"] = "ddp_spawn"
    trainer = Trainer(callbacks=[writer], enable_model_summary=False, **kwargs)
    trainer.predict(module, datamodule=SeedDataModule(num_samples, batch_size, seed=3), return_predictions=False)
    return read_scores(out_dir)


@pytest.fixture(scope="session")
def toy_model():
    """``toy_model(tmp_path, hidden=32, seed=0, steps=8)`` -> (DDPM adapter of a small MLP, posterior path)."""
    return _toy_model


@pytest.fixture(scope="session")
def predict():
    """``predict(adapter, posterior, out_dir, num_samples=40, batch_size=16, devices=1, replace=False, **module)``."""
    return _predict
