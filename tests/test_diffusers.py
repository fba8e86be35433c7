"""DiffusersAdapter on tiny randomly initialised diffusers models built offline."""

import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from genunc_lightning.adapters import DiffusersAdapter, LastLayerError  # noqa: E402


def tiny_cond_unet():
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, norm_num_groups=4, attention_head_dim=2,
    )  # fmt: skip


def tiny_dit():
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=2, num_layers=1, sample_size=8,
        patch_size=2, num_embeds_ada_norm=3, norm_num_groups=1,
    )  # fmt: skip


@pytest.fixture
def make(tiny_unet):
    """``make(kind, scheduler, prediction_type)``: a DiffusersAdapter around a tiny unet, cond unet or DiT."""

    def build(kind, scheduler="DDIMScheduler", prediction_type="epsilon"):
        torch.manual_seed(0)
        sched = getattr(diffusers, scheduler)(num_train_timesteps=100, prediction_type=prediction_type)
        if kind == "unet":
            return DiffusersAdapter(tiny_unet(), sched, (1, 8, 8), num_classes=3, steps=5)
        if kind == "cond":
            ehs = torch.randn(1, 3, 8)
            return DiffusersAdapter(tiny_cond_unet(), sched, (1, 8, 8), encoder_hidden_states=ehs, steps=5)
        return DiffusersAdapter(tiny_dit(), sched, (1, 8, 8), num_classes=3, steps=5)

    return build


CASES = [
    ("unet", "DDIMScheduler"),
    ("unet", "DDPMScheduler"),
    ("cond", "DPMSolverMultistepScheduler"),
    ("dit", "DDPMScheduler"),
    ("dit", "DDIMScheduler"),
]


@pytest.mark.parametrize(("kind", "scheduler"), CASES)
def test_same_seed_same_sample_in_a_batch_of_1_and_of_8(kind, scheduler, make):
    adapter = make(kind, scheduler).eval()
    seeds = torch.arange(10, 18)
    classes = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]) if adapter.num_classes else None
    eight = adapter.sample(seeds, classes)
    for i in (0, 6):
        one = adapter.sample(seeds[i : i + 1], classes[i : i + 1] if classes is not None else None)
        torch.testing.assert_close(one[0], eight[i], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(eight[0], eight[1])


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_fisher_on_a_diffusers_unet_matches_brute_force(prediction_type, assert_fisher_close, make):
    adapter = make("unet", prediction_type=prediction_type).double()
    batch = (torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0]))
    assert_fisher_close(adapter, batch)


def test_learned_sigma_dit_uses_the_prediction_half(make):
    adapter = make("dit")
    assert adapter.last_layer == "proj_out_2" and adapter.prediction_channels == 1
    out = adapter.call_denoiser(torch.randn(2, 1, 8, 8), torch.tensor([3, 4]), torch.tensor([0, 1]))
    assert out.shape == (2, 1, 8, 8)


@pytest.mark.parametrize(("kind", "scheduler"), [("unet", "DDIMScheduler"), ("dit", "DDPMScheduler"),
                                                 ("cond", "DPMSolverMultistepScheduler")])  # fmt: skip
def test_fit_laplace_predict_evaluate(kind, scheduler, tmp_path, fit_predict_evaluate, make):
    adapter = make(kind, scheduler)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(48, 1, 8, 8, generator=g) * 2 - 1
    labels = torch.randint(0, 3, (48,), generator=g)
    data = torch.utils.data.TensorDataset(images, labels) if adapter.num_classes else images
    report = fit_predict_evaluate(tmp_path, adapter, data, images, num_samples=24, batch_size=12, keep=12)
    assert {"pixel", "random", "realism"} <= set(report["results"])


def test_a_scheduler_without_the_api_and_an_unreached_layer_are_refused(tiny_unet):
    with pytest.raises(TypeError, match="has no set_timesteps, step, timesteps: a scheduler needs diffusers' sampling"):
        DiffusersAdapter(tiny_unet(), object(), (1, 8, 8), num_classes=3)
    with pytest.raises(ValueError, match="variance_type='learned_range'.*ddpm_variance='learned_range'"):
        DiffusersAdapter(tiny_unet(), diffusers.DDPMScheduler(variance_type="learned_range"), (1, 8, 8), num_classes=3)
    model = tiny_unet()
    model.unused = torch.nn.Conv2d(8, 1, 3, padding=1)
    adapter = DiffusersAdapter(model, diffusers.DDIMScheduler(num_train_timesteps=100), (1, 8, 8), "unused", 3, 2)
    with pytest.raises(LastLayerError, match="never reaches 'unused'"):
        adapter.check_last_layer_reached()
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        DiffusersAdapter(tiny_cond_unet(), diffusers.DDIMScheduler(), (1, 8, 8))


def test_the_package_imports_without_diffusers():
    import sys

    # A fresh import of the whole package with diffusers unavailable, in this process (a new interpreter
    # costs 12 s of imports): sys.modules is put back as it was afterwards.
    saved = dict(sys.modules)
    try:
        for name in [m for m in sys.modules if m.split(".")[0] in ("genunc_lightning", "diffusers")]:
            del sys.modules[name]
        sys.modules["diffusers"] = None
        import genunc_lightning.adapters
        from genunc_lightning.adapters import DiffusersAdapter

        assert genunc_lightning.adapters is not saved["genunc_lightning.adapters"]  # imported anew
        with pytest.raises(ImportError, match=re.escape("pip install 'genunc-lightning[diffusers]'")):
            DiffusersAdapter(None, None, (1,))
    finally:
        sys.modules.clear()
        sys.modules.update(saved)
