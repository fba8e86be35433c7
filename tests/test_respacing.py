"""guided-diffusion's timestep respacing, the scaled-linear schedule and a timestep offset (issue 22, item 3)."""

import numpy as np
import pytest
import torch

from genunc_lightning.adapters import GaussianDiffusionAdapter
from genunc_lightning.adapters.gaussian import alphas_cumprod, respaced_timesteps


def guided_diffusion_rule(num_timesteps, section_counts):
    """Their documented rule, written again here with numpy: sections, fractional strides, rounding."""
    if section_counts.startswith("ddim"):
        want = int(section_counts[4:])
        strides = [s for s in range(1, num_timesteps) if len(np.arange(0, num_timesteps, s)) == want]
        return sorted(np.arange(0, num_timesteps, strides[0]).tolist())
    counts = np.array([int(c) for c in section_counts.split(",")])
    sizes = np.full(len(counts), num_timesteps // len(counts)) + (np.arange(len(counts)) < num_timesteps % len(counts))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    taken = set()
    for start, size, count in zip(starts, sizes, counts, strict=True):
        frac = 1.0 if count <= 1 else (np.float64(size) - 1) / (count - 1)
        position = np.float64(0.0)
        for _ in range(count):
            taken.add(int(start + round(position)))
            position += frac  # accumulated as they do, not multiplied
    return sorted(taken)


@pytest.mark.parametrize("n", range(1, 251))
def test_respacing_with_one_section_is_their_rule_for_every_count_up_to_250(n):
    assert respaced_timesteps(1000, str(n)) == guided_diffusion_rule(1000, str(n))


@pytest.mark.parametrize("spec", ["ddim10", "ddim25", "ddim50", "ddim100", "ddim250", "10,15,20", "50,50,100,100"])
def test_respacing_of_ddim_strides_and_sections_is_their_rule(spec):
    assert respaced_timesteps(1000, spec) == guided_diffusion_rule(1000, spec)


def test_the_issues_examples_and_bad_specs():
    assert respaced_timesteps(1000, "ddim10") == list(range(0, 1000, 100))  # 0, 100, …, 900
    assert respaced_timesteps(1000, "1") == [0]
    with pytest.raises(ValueError, match="no integer stride"):
        respaced_timesteps(1000, "ddim999")
    with pytest.raises(ValueError, match="cannot take 600 steps of a section of 500"):
        respaced_timesteps(1000, "600,10")


def test_scaled_linear_is_diffusers_scaled_linear():
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    ours = alphas_cumprod("scaled_linear", 1000, 0.00085, 0.012)
    torch.testing.assert_close(ours.float(), theirs, rtol=1e-6, atol=1e-7)


class Recorder(torch.nn.Module):
    """A denoiser that records the timesteps it is called with."""

    def __init__(self):
        super().__init__()
        self.out = torch.nn.Linear(2, 2)
        self.seen = []

    def forward(self, x, t):
        self.seen.append(t.tolist())
        return self.out(x)


def test_a_respaced_ddim_visits_their_timesteps_and_equals_the_ddim_loop_in_float64():
    torch.manual_seed(0)
    net = Recorder().double()
    adapter = GaussianDiffusionAdapter(net, "out", (2,), schedule="scaled_linear", beta_start=0.00085,
                                       beta_end=0.012, timestep_respacing="ddim10", timestep_offset=1)  # fmt: skip
    assert adapter.steps == 10 and adapter.fixed_steps
    seeds = torch.tensor([3, 4])
    x = torch.stack([torch.randn(2, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
                     for s in seeds])  # fmt: skip
    ours = adapter.sample(seeds, steps=None)
    assert [row[0] for row in net.seen] == [t + 1 for t in range(900, -1, -100)]  # t + 1, as U-ViT's network takes
    a = alphas_cumprod("scaled_linear", 1000, 0.00085, 0.012)
    steps = list(range(900, -1, -100))
    with torch.no_grad():
        for i, t in enumerate(steps):
            e = net.out(x)
            x0 = (x - (1 - a[t]).sqrt() * e) / a[t].sqrt()
            x = x0 if i == len(steps) - 1 else a[steps[i + 1]].sqrt() * x0 + (1 - a[steps[i + 1]]).sqrt() * e
    torch.testing.assert_close(ours, x)
    with pytest.raises(ValueError, match="fixes 10 steps"):
        adapter.sample(seeds, steps=5)


class Wrapper(torch.nn.Module):
    """A network wrapped for the adapter, as U-ViT often is: the checkpoint has the inner network's keys."""

    def __init__(self):
        super().__init__()
        self.nnet = Recorder()

    def forward(self, x, t):
        return self.nnet(x, t)


def test_weights_of_a_wrapped_network_load_into_its_submodule(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    inner = Recorder()
    save_file({k: v.contiguous() for k, v in inner.state_dict().items()}, str(tmp_path / "nnet.safetensors"))
    adapter = GaussianDiffusionAdapter(Wrapper(), "nnet.out", (2,))
    with pytest.raises(ValueError, match=r"keys are those of the submodule 'nnet': load_weights\(path, into='nnet'\)"):
        adapter.load_weights(tmp_path / "nnet.safetensors")
    adapter.load_weights(tmp_path / "nnet.safetensors", into="nnet")
    torch.testing.assert_close(adapter.denoiser.nnet.out.weight, inner.out.weight, rtol=0, atol=0)
