"""The Fisher pass through Lightning: Trainer.predict, DDP, the callback, the CLI."""

import pytest
import torch
from lightning.pytorch import Trainer

from genunc_lightning.adapters import GaussianDiffusionAdapter
from genunc_lightning.data import DiffusionDataModule, GaussianGrid2D, subset_indices
from genunc_lightning.laplace import (
    DiagonalLaplacePosterior,
    FisherAccumulationCallback,
    LaplaceFitModule,
    fisher_batch,
)
from genunc_lightning.models import MLPDenoiser
from genunc_lightning.seeding import example_seeds


def make_module(seed=0, draws=1):
    torch.manual_seed(seed)
    adapter = GaussianDiffusionAdapter(MLPDenoiser(hidden=32, depth=2), "out", (2,))
    return LaplaceFitModule(adapter, draws_per_example=draws, seed=5)


def run_fit(module, datamodule, output=None, laplace=None, **trainer_kwargs):
    callback = FisherAccumulationCallback(output=output, **(laplace or {}))
    kwargs = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    kwargs.update(trainer_kwargs)
    Trainer(callbacks=[callback], **kwargs).predict(module, datamodule=datamodule, return_predictions=False)
    return callback.posterior


def test_predict_loop_equals_a_direct_sum_and_ignores_batch_size():
    data = GaussianGrid2D(num_points=300, seed=1)
    module = make_module(draws=2)
    small = run_fit(module, DiffusionDataModule(data, batch_size=7, subset=100, subset_seed=3))
    large = run_fit(module, DiffusionDataModule(data, batch_size=64, subset=100, subset_seed=3))
    idx = subset_indices(300, 100, 3)
    direct = fisher_batch(module.adapter, data.points[idx], [example_seeds(5, idx, stream=k) for k in range(2)])
    for name in direct.diag:
        torch.testing.assert_close(small.fisher[name], direct.diag[name], rtol=1e-5, atol=0)
        torch.testing.assert_close(large.fisher[name], small.fisher[name], rtol=1e-5, atol=0)
    assert small.num_examples == 100
    assert small.info["num_residuals"] == 100 * 2 * 2


def test_subset_is_a_fraction_or_a_count_even_when_a_parser_made_it_a_float():
    assert torch.equal(subset_indices(300, 100.0, 3), subset_indices(300, 100, 3))  # YAML may give 100.0
    assert len(subset_indices(300, 0.5)) == 150 and len(subset_indices(300, 1e-6)) == 1
    assert torch.equal(subset_indices(300, 1.0), torch.arange(300))
    for bad, message in [(2.5, "outside \\(0, 1\\]"), (0.0, "outside \\(0, 1\\]"), (301, "outside \\[1, 300\\]"),
                         (True, "fraction in"), ("10", "fraction in")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            subset_indices(300, bad)


def test_two_ddp_processes_equal_one(tmp_path, ddp_start_method):
    from lightning.pytorch.strategies import DDPStrategy

    data = GaussianGrid2D(num_points=203, seed=2)  # uneven split across ranks
    one = run_fit(make_module(), DiffusionDataModule(data, batch_size=16, subset=0.5), output=tmp_path / "one.st")
    run_fit(
        make_module(),
        DiffusionDataModule(data, batch_size=16, subset=0.5),
        output=tmp_path / "two.st",
        devices=2,
        strategy=DDPStrategy(start_method=ddp_start_method),
    )
    two = DiagonalLaplacePosterior.load(tmp_path / "two.st")
    assert two.num_examples == one.num_examples == 102
    for name in one.fisher:
        torch.testing.assert_close(two.fisher[name], one.fisher[name], rtol=1e-6, atol=0)
    assert two.sigma == pytest.approx(one.sigma, rel=1e-6)
    assert two.prior_precision == pytest.approx(one.prior_precision, rel=1e-6)


class PoisonedGrid(GaussianGrid2D):
    def __getitem__(self, i):
        point = super().__getitem__(i)
        return point * float("nan") if i == 7 else point


def test_nan_loss_names_the_batch_and_writes_nothing(tmp_path):
    with pytest.raises(FloatingPointError, match=r"batch 1 \(dataset indices \[7\]\)"):
        run_fit(make_module(), DiffusionDataModule(PoisonedGrid(num_points=20), batch_size=5), output=tmp_path / "p.st")
    assert not any(tmp_path.iterdir())


class ZeroOut(MLPDenoiser):
    def forward(self, x, t, y=None):
        return 0.0 * super().forward(x, t, y)


def test_zero_fisher_writes_nothing(tmp_path):
    module = LaplaceFitModule(GaussianDiffusionAdapter(ZeroOut(hidden=8, depth=1), "out", (2,)))
    with pytest.raises(ValueError, match="zero everywhere"):
        run_fit(module, DiffusionDataModule(GaussianGrid2D(num_points=20), batch_size=5), output=tmp_path / "p.st")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("subset", [0.0, 1.5, -0.1, 0, 21])
def test_subset_outside_its_range_is_an_error(subset):
    with pytest.raises(ValueError, match="outside"):
        DiffusionDataModule(GaussianGrid2D(num_points=20), subset=subset)


def test_paper_preset_and_conventions_through_the_callback():
    data = DiffusionDataModule(GaussianGrid2D(num_points=120, seed=2), batch_size=40)
    module = make_module()
    auto = run_fit(module, data)
    paper = run_fit(module, data, laplace={"preset": "paper"})
    assert auto.convention.value == "ef" and paper.info["preset"] == "paper"
    expected = auto.paper()
    for name in auto.fisher:
        torch.testing.assert_close(paper.variance[name], expected.variance[name], rtol=1e-12, atol=0)
        torch.testing.assert_close(paper.precision[name], 2 * auto.fisher[name] + 1, rtol=1e-12, atol=0)
    lt = run_fit(module, data, laplace={"sigma": 0.5, "prior_precision": 2.0, "convention": "laplace_torch"})
    torch.testing.assert_close(lt.precision["weight"], auto.fisher["weight"] * 2 / 0.25 + 2.0)


def test_bad_callback_settings():
    with pytest.raises(ValueError, match="'auto' or a positive number"):
        FisherAccumulationCallback(sigma=-1.0)
    with pytest.raises(ValueError, match="preset=.paper. fixes sigma, dataset_size; drop those options"):
        FisherAccumulationCallback(preset="paper", sigma=0.5, dataset_size=10, temperature=1.0)
    FisherAccumulationCallback(preset="paper", sigma=1.0, convention="laplace_torch")  # agreeing values are fine
    with pytest.raises(ValueError, match="Unknown preset 'papr'"):
        FisherAccumulationCallback(preset="papr")
    with pytest.raises(ValueError, match="choose one of ef, laplace_torch"):
        FisherAccumulationCallback(convention="EF ")
    with pytest.raises(ValueError, match="at least 1"):
        LaplaceFitModule(GaussianDiffusionAdapter(MLPDenoiser(), "out", (2,)), draws_per_example=0)


def test_cli_fit_then_fit_laplace(tmp_path, genunc):
    from genunc_lightning.cli import CONFIG_DIR

    model_cfg = str(CONFIG_DIR / "toy" / "model.yaml")
    fit = genunc(
        "fit", "--config", model_cfg, "--config", str(CONFIG_DIR / "toy" / "fit.yaml"),
        "--trainer.max_steps", "20", "--trainer.enable_progress_bar", "false",
        "--data.dataset.init_args.num_points", "2000", cwd=tmp_path,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert (tmp_path / "runs/toy/denoiser.ckpt").is_file()

    printed = genunc("fit_laplace", "--config", model_cfg, "--config", str(CONFIG_DIR / "toy" / "fit_laplace.yaml"),
                  "--print_config", cwd=tmp_path)  # fmt: skip
    assert printed.returncode == 0, printed.stderr[-3000:]
    assert "laplace:" in printed.stdout and "prior_precision: auto" in printed.stdout

    res = genunc(
        "fit_laplace", "--config", model_cfg, "--config", str(CONFIG_DIR / "toy" / "fit_laplace.yaml"),
        "--data.subset", "0.25", "--data.dataset.init_args.num_points", "2000", cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "examples seen    n = 500" in res.stdout + res.stderr
    post = DiagonalLaplacePosterior.load(tmp_path / "runs/toy/posterior.safetensors")
    adapter = GaussianDiffusionAdapter(MLPDenoiser(), "out", (2,))
    adapter.load_weights(tmp_path / "runs/toy/denoiser.ckpt")
    post.check_compatible(adapter.denoiser)
    assert post.info["sigma_mode"] == "auto" and post.num_examples == 500

    paper = genunc("fit_laplace", "--config", model_cfg, "--config", str(CONFIG_DIR / "toy" / "fit_laplace.yaml"),
                "--data.subset", "100", "--data.dataset.init_args.num_points", "2000", "--laplace.preset", "paper",
                "--laplace.output", "paper.safetensors", cwd=tmp_path)  # fmt: skip
    assert paper.returncode == 0, paper.stderr[-3000:]
    assert "convention       laplace_torch" in paper.stdout + paper.stderr
    paper_post = DiagonalLaplacePosterior.load(tmp_path / "paper.safetensors")
    assert (paper_post.sigma, paper_post.prior_precision, paper_post.dataset_size) == (1.0, 1.0, 100)

    bad = genunc("fit_laplace", "--config", model_cfg, "--config", str(CONFIG_DIR / "toy" / "fit_laplace.yaml"),
              "--data.subset", "1.5", cwd=tmp_path)  # fmt: skip
    assert bad.returncode != 0 and "outside (0, 1]" in bad.stderr


def test_cli_unknown_subcommand(tmp_path, genunc):
    res = genunc("fitt", cwd=tmp_path)
    assert res.returncode == 2 and "unknown subcommand 'fitt'" in res.stderr
