"""Errors that name the fix when a network is given the wrong way (issue 22, item 6)."""

import pytest
import torch

from genunc_lightning.adapters import DenoiserCallError, GaussianDiffusionAdapter
from tests.denoisers import ConvDenoiser


class GuidedDiffusionStyle(torch.nn.Module):
    """guided-diffusion's UNetModel contract: ``num_classes`` set, and an assertion without ``y``."""

    def __init__(self):
        super().__init__()
        self.num_classes = 10
        self.out = torch.nn.Linear(2, 2)

    def forward(self, x, timesteps, y=None):
        assert (y is not None) == (self.num_classes is not None), (
            "must specify y if and only if the model is class-conditional"
        )
        return self.out(x)


def test_a_class_conditional_network_called_without_classes_names_num_classes():
    adapter = GaussianDiffusionAdapter(GuidedDiffusionStyle(), "out", (2,), steps=2)
    with pytest.raises(
        DenoiserCallError, match=r"looks class-conditional \(num_classes = 10\).*give the adapter num_classes="
    ):
        adapter.sample(torch.arange(2))


def test_a_diffusers_dit_without_num_classes_names_num_classes():
    diffusers = pytest.importorskip("diffusers")
    from genunc_lightning.adapters import DiffusersAdapter

    dit = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                          num_layers=1, sample_size=4, patch_size=2, num_embeds_ada_norm=10,
                                          norm_num_groups=8)  # fmt: skip
    adapter = DiffusersAdapter(dit, diffusers.DDIMScheduler(), (4, 4, 4), steps=2)
    with pytest.raises(DenoiserCallError, match=r"config.num_embeds_ada_norm = 10"):
        adapter.sample(torch.arange(2))


def test_a_network_that_learns_its_variance_names_output_channels():
    net = ConvDenoiser(2, 3, torch.nn.Conv2d(4, 6, 3, padding=1), learn_sigma=True)
    adapter = GaussianDiffusionAdapter(net, "out", (3, 4, 4), steps=2)
    with pytest.raises(ValueError, match=r"returns 6 channels for inputs of 3.*output_channels=3"):
        adapter.sample(torch.arange(2))
    GaussianDiffusionAdapter(net, "out", (3, 4, 4), steps=2, output_channels=3).sample(torch.arange(2))


class SomePipeline:
    """What a diffusers pipeline looks like to the adapter: components, not a Module."""

    components = {"unet": None, "scheduler": None}


def test_a_pipeline_where_a_network_is_expected_names_from_pipeline():
    with pytest.raises(TypeError, match=r"SomePipeline was passed where a network is expected.*from_pipeline"):
        GaussianDiffusionAdapter(SomePipeline(), "out", (2,))
