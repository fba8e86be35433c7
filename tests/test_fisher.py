"""The diagonal empirical Fisher against independent references (laplace-torch, brute force)."""

import pytest
import torch
from torch import nn

from genunc_lightning import seeding
from genunc_lightning.adapters import FlowMatchingAdapter, GaussianDiffusionAdapter, LastLayerError
from genunc_lightning.laplace import DiagonalLaplacePosterior, fisher_batch
from genunc_lightning.models import MLPDenoiser, SmallUNet
from genunc_lightning.seeding import example_seeds
from tests.denoisers import ConvDenoiser, TokenDenoiser

CONV_CASES = {
    "conv2d_3x3_bias_groups1": (2, (3, 5, 5), lambda: nn.Conv2d(4, 3, 3, padding=1)),
    "conv2d_3x3_bias_groups2": (2, (4, 5, 5), lambda: nn.Conv2d(4, 4, 3, padding=1, groups=2)),
    "conv2d_3x3_nobias_groups2": (2, (4, 5, 5), lambda: nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)),
    "conv2d_stride2_dilation2": (2, (3, 6, 6), lambda: nn.Conv2d(4, 3, 3, stride=2, padding=2, dilation=2)),
    "conv1d_k5": (1, (2, 9), lambda: nn.Conv1d(4, 2, 5, padding=2)),
    "conv1d_stride3_nobias": (1, (2, 9), lambda: nn.Conv1d(4, 2, 2, stride=3, bias=False)),
    "conv3d_3x3x3": (3, (2, 3, 4, 4), lambda: nn.Conv3d(4, 2, 3, padding=1)),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_last_layers_match_brute_force(case, assert_fisher_close):
    dims, shape, make = CONV_CASES[case]
    model = ConvDenoiser(dims, shape[0], make()).double()
    adapter = GaussianDiffusionAdapter(model, "out", shape)
    batch = torch.randn(5, *shape, dtype=torch.float64)
    assert_fisher_close(adapter, batch)


@pytest.mark.parametrize("case", sorted(c for c in CONV_CASES if c.startswith("conv2d")))
def test_conv2d_unfold_and_vmap_paths_agree(case):
    from genunc_lightning.laplace.fisher import per_example_gradients

    _, shape, make = CONV_CASES[case]
    layer = make().double()
    x = torch.randn(4, layer.in_channels, *shape[1:], dtype=torch.float64)
    g = torch.randn_like(layer(x))
    a = per_example_gradients(layer, x, g, "vmap")
    b = per_example_gradients(layer, x, g, "unfold")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-12, atol=1e-12)


def test_per_token_linear_matches_brute_force(assert_fisher_close):
    adapter = GaussianDiffusionAdapter(TokenDenoiser().double(), "decoder_pred", (4, 6), prediction="v")
    assert_fisher_close(adapter, torch.randn(6, 4, 6, dtype=torch.float64))


def test_learned_variance_channels_are_dropped_after_the_last_layer(assert_fisher_close):
    model = SmallUNet(in_channels=1, base_channels=8, channel_mults=(1,), num_classes=3, learn_sigma=True).double()
    adapter = GaussianDiffusionAdapter(model, "out.2", (1, 6, 6), num_classes=3, output_channels=1)
    batch = (torch.randn(4, 1, 6, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0]))
    ours = assert_fisher_close(adapter, batch)
    # The variance channels' weights never reach the loss: their Fisher rows are exactly zero.
    assert ours.diag["weight"][1:].abs().max() == 0
    assert ours.diag["weight"][:1].abs().max() > 0


@pytest.mark.parametrize("draws", [1, 3])
def test_flow_matching_and_several_draws(draws, assert_fisher_close):
    adapter = FlowMatchingAdapter(MLPDenoiser(data_dim=3, hidden=16, depth=1).double(), "out", (3,))
    ours = assert_fisher_close(adapter, torch.randn(7, 3, dtype=torch.float64), draws=draws)
    assert ours.losses.shape == (draws, 7)


def test_fisher_pass_builds_no_graph_in_the_backbone_and_restores_flags():
    model = MLPDenoiser(hidden=16, depth=2)
    model.inp.weight.requires_grad_(False)  # a user's own frozen parameter stays frozen afterwards
    adapter = GaussianDiffusionAdapter(model, "out", (2,))
    seen = []  # does the last layer's input carry an autograd graph?
    model.out.register_forward_pre_hook(lambda module, args: seen.append(args[0].grad_fn is not None))
    with torch.enable_grad():  # control: an ordinary forward builds a graph through the backbone
        adapter.loss(torch.randn(4, 2), example_seeds(0, range(4)))
    out = fisher_batch(adapter, torch.randn(4, 2), [example_seeds(0, range(4))])
    assert seen == [True, False]
    assert all(p.grad is None for p in model.parameters())
    assert not model.inp.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "inp.weight")
    assert out.num_examples == 4 and out.num_residuals == 8


def test_matches_laplace_torch_asdl_ef_on_a_linear_last_layer():
    """laplace-torch's AsdlEF on the same inputs and targets: H (its factor 2) and the paper preset's variance."""
    from laplace import DiagLLLaplace
    from laplace.curvature import AsdlEF

    denoiser = MLPDenoiser(hidden=32, depth=2).double()
    adapter = GaussianDiffusionAdapter(denoiser, "out", (2,), num_train_steps=100)
    x0 = torch.randn(24, 2, dtype=torch.float64)
    seeds = example_seeds(3, range(24))
    ours = fisher_batch(adapter, x0, [seeds])

    # The same (t, ε) draws, materialised as a plain regression problem (x_t, t) -> ε.
    gens = seeding.generators(seeds, "cpu")
    t = seeding.randint(gens, 100, "cpu")
    eps = seeding.randn(gens, (2,), "cpu", torch.float64)
    a = adapter.alphas_cumprod[t].view(-1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps

    class Regression(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = denoiser

        def forward(self, inputs):
            return self.net(inputs[:, :2], inputs[:, 2])

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.cat([xt, t.double()[:, None]], 1), eps), batch_size=8
    )
    la = DiagLLLaplace(Regression(), "regression", last_layer_name="net.out", backend=AsdlEF)
    la.fit(loader)  # sigma_noise = prior_precision = temperature = 1: the paper's public code
    ref = torch.cat([ours.diag["weight"].flatten(), ours.diag["bias"].flatten()])
    torch.testing.assert_close(la.H / 2, ref, rtol=1e-5, atol=0)

    # The paper preset is laplace-torch's posterior on the same batches and draws.
    post = DiagonalLaplacePosterior.fit(
        denoiser.out, "out", ours.diag, 24, float(ours.squared_residual_sum), ours.num_residuals, dataset_size=2400
    ).paper()
    variance = torch.cat([post.variance["weight"].flatten(), post.variance["bias"]])
    torch.testing.assert_close(variance, la.posterior_variance.double(), rtol=1e-6, atol=0)


def test_last_layer_not_reached_is_an_error():
    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(2, 2)
            self.unused = nn.Linear(2, 2)

        def forward(self, x, t):
            return self.used(x)

    adapter = GaussianDiffusionAdapter(Skips(), "unused", (2,))
    with pytest.raises(LastLayerError, match="never reached"):
        fisher_batch(adapter, torch.randn(3, 2), [example_seeds(0, range(3))])
