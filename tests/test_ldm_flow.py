"""CompVis/Stability LatentDiffusion (through a faithful double) and latent flow matching with a DiT."""

import pytest
import torch
from torch import nn

from genunc_lightning.adapters import FlowMatchingAdapter, LatentDiffusionAdapter
from tests.ldm_double import FakeLatentDiffusion


class DictImages(torch.utils.data.Dataset):
    """Items as CompVis datasets give them: {"image": h w c in [-1, 1], "class_label": int}."""

    def __init__(self, n=40):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 8, 8, 1, generator=g) * 2 - 1
        self.labels = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "class_label": self.labels[i]}


def ldm_adapter(parameterization="eps", sampler="ddim"):
    torch.manual_seed(0)
    return LatentDiffusionAdapter(FakeLatentDiffusion(parameterization), (2, 4, 4), num_classes=3, sampler=sampler,
                                  steps=5)  # fmt: skip


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_ldm_fisher_matches_brute_force(parameterization, assert_fisher_close):
    adapter = ldm_adapter(parameterization)  # float32: their get_input casts images with .float()
    data = DictImages(5)
    assert_fisher_close(adapter, {"image": data.images, "class_label": data.labels}, rtol=1e-4, atol_scale=1e-8)
    assert adapter.last_layer == "model.diffusion_model.out.2"


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_ldm_same_seed_same_sample_in_batches_of_1_and_8(sampler):
    adapter = ldm_adapter(sampler=sampler).eval()
    seeds, classes = torch.arange(8), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    eight = adapter.sample(seeds, classes)
    torch.testing.assert_close(adapter.sample(seeds[3:4], classes[3:4])[0], eight[3], rtol=1e-4, atol=1e-5)
    assert adapter.decode(eight).shape == (8, 1, 8, 8)  # decoded through decode_first_stage
    torch.testing.assert_close(adapter.alphas_cumprod, adapter.denoiser.alphas_cumprod.double())


def test_ldm_fit_laplace_predict_evaluate(tmp_path, fit_predict_evaluate):
    adapter = ldm_adapter()
    images = DictImages().images.permute(0, 3, 1, 2)
    report = fit_predict_evaluate(tmp_path, adapter, DictImages(), images, num_samples=20, batch_size=10, keep=10)
    assert {"pixel", "random"} <= set(report["results"])


def test_ldm_bad_input():
    with pytest.raises(TypeError, match="needs a LatentDiffusion"):
        LatentDiffusionAdapter(nn.Linear(2, 2), (2, 4, 4))
    ldm = FakeLatentDiffusion()
    ldm.parameterization = "score"
    with pytest.raises(ValueError, match="supported: eps, x0, v"):
        LatentDiffusionAdapter(ldm, (2, 4, 4))


class DiTVelocity(nn.Module):
    """A few lines to use a diffusers DiT as a flow-matching velocity network (time in [0, 1])."""

    def __init__(self):
        super().__init__()
        import diffusers

        self.dit = diffusers.DiTTransformer2DModel(
            num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, num_layers=1, sample_size=4,
            patch_size=2, num_embeds_ada_norm=1000, norm_num_groups=1,
        )  # fmt: skip

    def forward(self, x, t, y):
        return self.dit(x, timestep=(t * 999).round().long(), class_labels=y).sample


def test_latent_flow_matching_dit_with_dopri5(tmp_path, fit_predict_evaluate):
    diffusers = pytest.importorskip("diffusers")  # only this test needs it: the LDM tests above run without
    torch.manual_seed(0)
    blocks = dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    vae = diffusers.AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8, 8), latent_channels=4,
                                  norm_num_groups=4, sample_size=8, **blocks).eval()  # fmt: skip
    adapter = FlowMatchingAdapter(DiTVelocity(), "dit.proj_out_2", (4, 4, 4), num_classes=3, sampler="dopri5",
                                  rtol=1e-4, atol=1e-4, image_range=(-1.0, 1.0), vae=vae)  # fmt: skip
    g = torch.Generator().manual_seed(1)
    images, labels = torch.rand(24, 1, 8, 8, generator=g) * 2 - 1, torch.randint(0, 3, (24,), generator=g)
    data = torch.utils.data.TensorDataset(images, labels)
    report = fit_predict_evaluate(tmp_path, adapter, data, images, num_samples=12, batch_size=6, keep=8, steps=1)
    assert report["samples"] == 12 and "pixel" in report["results"]


def test_ldm_txt2img_guidance_is_their_ddim_loop_with_the_empty_prompt_as_unconditional():
    """Prompts through get_learned_conditioning, uc = the empty prompt's, e = e_u + w (e_c − e_u) (their sampler)."""
    from genunc_lightning.adapters.base import Condition
    from genunc_lightning.adapters.gaussian import sampling_timesteps
    from tests.ldm_double import FakeTextLatentDiffusion

    torch.manual_seed(0)
    ldm = FakeTextLatentDiffusion().eval()
    adapter = LatentDiffusionAdapter(ldm, (2, 4, 4), steps=4, guidance_scale=5.0)
    assert adapter.takes_prompts
    prompts, seeds = ("a cat", "a dog", "a cat"), torch.tensor([3, 4, 5])
    ours = adapter.sample(seeds, Condition(torch.tensor([0, 1, 0]), prompts=prompts))
    # their loop, written out: x_in = [x; x], c_in = [uc; c], one apply_model, chunk, guide, DDIM (η = 0)
    x = torch.stack([torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).double()
    c, uc = ldm.get_learned_conditioning(list(prompts)), ldm.get_learned_conditioning([""] * 3)
    a = ldm.alphas_cumprod.double()
    steps = sampling_timesteps(1000, 4).tolist()
    for i, t in enumerate(steps):
        tt = torch.full((6,), t, dtype=torch.long)
        e_u, e_c = ldm.apply_model(torch.cat([x, x]).float(), tt, torch.cat([uc, c])).double().chunk(2)
        e = e_u + 5.0 * (e_c - e_u)
        x0 = (x - (1 - a[t]).sqrt() * e) / a[t].sqrt()
        x = x0 if i == len(steps) - 1 else a[steps[i + 1]].sqrt() * x0 + (1 - a[steps[i + 1]]).sqrt() * e
    torch.testing.assert_close(ours.double(), x, rtol=1e-4, atol=1e-4)
    # captions in the training batches reach the Fisher pass through their own get_input
    images = DictImages(4).images
    batch = {"image": images, "caption": ["a cat", "a dog", "", "a cat"]}
    assert adapter.residual(batch, torch.arange(4)).shape == (4, 2, 4, 4)
