"""fit_laplace -> predict -> evaluate for any adapter, through the posterior file and the run directory."""

import torch
from lightning.pytorch import Trainer

from genunc_lightning.data import DiffusionDataModule, SeedDataModule
from genunc_lightning.evaluation import Evaluation
from genunc_lightning.laplace import FisherAccumulationCallback, LaplaceFitModule
from genunc_lightning.uncertainty import GenerativeUncertaintyModule, PixelLikelihood, ScoredSampleWriter

TRAINER = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


def fit_predict_evaluate(tmp_path, adapter, train_data, reference_images, num_samples, batch_size, keep, **module):
    """Runs the three steps on tiny data and returns the evaluation report (pixel score, 2 members)."""
    posterior = tmp_path / "posterior.safetensors"
    Trainer(callbacks=[FisherAccumulationCallback(output=str(posterior))], inference_mode=False, **TRAINER).predict(
        LaplaceFitModule(adapter), datamodule=DiffusionDataModule(train_data, batch_size=16), return_predictions=False
    )
    scored = GenerativeUncertaintyModule(adapter, str(posterior), [PixelLikelihood()], num_members=2, **module)
    Trainer(callbacks=[ScoredSampleWriter(str(tmp_path / "run"))], **TRAINER).predict(
        scored, datamodule=SeedDataModule(num_samples, batch_size, num_classes=adapter.num_classes),
        return_predictions=False,
    )  # fmt: skip
    reference = torch.utils.data.TensorDataset(reference_images)
    return Evaluation(str(tmp_path / "run"), reference, reference_range=(-1.0, 1.0), keep=keep, random_subsets=2,
                      fractions=[1.0]).run()  # fmt: skip
