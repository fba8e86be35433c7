"""Every diffusers scheduler of the sampler layer against its own loop, for diffusers and other networks."""

import inspect

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from genunc_lightning.adapters import DiffusersAdapter, GaussianDiffusionAdapter  # noqa: E402
from genunc_lightning.adapters.diffusers import TESTED_SCHEDULERS  # noqa: E402
from tests.denoisers import TokenDenoiser  # noqa: E402

STEPS = 6
# (scheduler, config, stochastic): stochastic ones draw noise in step(), from the generators they are given.
CASES = [
    ("DDPMScheduler", {}, True),
    ("DDIMScheduler", {}, False),
    ("PNDMScheduler", {}, False),
    ("PNDMScheduler", {"skip_prk_steps": True}, False),
    ("EulerDiscreteScheduler", {}, False),
    ("EulerAncestralDiscreteScheduler", {}, True),
    ("HeunDiscreteScheduler", {}, False),
    ("KDPM2DiscreteScheduler", {}, False),
    ("KDPM2AncestralDiscreteScheduler", {}, True),
    ("LMSDiscreteScheduler", {}, False),
    ("DPMSolverMultistepScheduler", {}, False),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, False),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, True),
    ("DPMSolverSinglestepScheduler", {}, False),
    ("DEISMultistepScheduler", {}, False),
    ("UniPCMultistepScheduler", {}, False),
    ("LCMScheduler", {}, True),
    ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, False),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in config.items()) for name, config, _ in CASES]


def test_every_tested_scheduler_has_a_case():
    assert {name for name, _, _ in CASES} == set(TESTED_SCHEDULERS)


def make_scheduler(name, config):
    return getattr(diffusers, name)(num_train_timesteps=100, **config)


def own_loop(network, scheduler, seeds, shape, steps, offset=0, other_step_noise=False):
    """The scheduler's loop as the diffusers docs write it, with a pipeline's per-sample generators.

    ``other_step_noise``: the same initial noise, but the steps' noise from other generators.
    """
    scheduler = type(scheduler).from_config(scheduler.config)
    scheduler.set_timesteps(steps)
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    x = torch.cat([torch.randn((1, *shape), generator=g) for g in generators])
    if other_step_noise:
        generators = [torch.Generator().manual_seed(1000 + int(s)) for s in seeds]
    x = x * getattr(scheduler, "init_noise_sigma", 1.0)  # flow-matching schedulers have none, nor scale_model_input
    scale = getattr(scheduler, "scale_model_input", lambda x, t: x)
    randomness = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = network(scale(x, t), (t + offset).expand(x.shape[0]))
            x = scheduler.step(out, t, x, **randomness).prev_sample
    return x


@pytest.mark.parametrize(("name", "config", "stochastic"), CASES, ids=IDS)
def test_a_diffusers_unet_samples_as_the_schedulers_own_loop(name, config, stochastic, tiny_unet):
    torch.manual_seed(0)
    unet = tiny_unet(num_classes=None).eval()
    scheduler = make_scheduler(name, config)
    adapter = DiffusersAdapter(unet, scheduler, (1, 8, 8), steps=STEPS)
    seeds = torch.tensor([3, 11, 12, 40])
    ours = adapter.sample(seeds)
    theirs = own_loop(lambda x, t: unet(x, t).sample, scheduler, seeds, (1, 8, 8), STEPS)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(ours).all() and not torch.allclose(ours[0], ours[1])
    if stochastic:  # each sample's noise is its own: drawn alone, it is the same sample
        for i in (0, 2):
            torch.testing.assert_close(adapter.sample(seeds[i : i + 1])[0], ours[i], rtol=1e-4, atol=1e-4)
        # and the steps' noise reaches it, so the equality above is that of the per-sample step draws too
        other = own_loop(lambda x, t: unet(x, t).sample, scheduler, seeds, (1, 8, 8), STEPS, other_step_noise=True)
        assert (ours - other).abs().max() > 1e-3


class UViTLike(torch.nn.Module):
    """A network of another library: no config, a plain tensor out, called as ``nnet(x, timesteps)``."""

    def __init__(self):
        super().__init__()
        self.nnet = TokenDenoiser()

    def forward(self, x, timesteps):
        return self.nnet(x, timesteps)


@pytest.mark.parametrize("name", ["UniPCMultistepScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler"])
def test_any_network_with_a_diffusers_scheduler(name):
    """U-ViT's case: scaled-linear betas, the network takes t + 1, sampled with DPM-Solver++ or UniPC."""
    torch.manual_seed(0)
    net = UViTLike().eval()
    betas = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    scheduler = make_scheduler(name, betas)
    seeds = torch.tensor([1, 2, 3])
    adapter = GaussianDiffusionAdapter(net, "nnet.decoder_pred", (4, 6), schedule="scaled_linear", beta_start=0.00085,
                                       beta_end=0.012, num_train_steps=100, timestep_offset=1, scheduler=scheduler,
                                       steps=STEPS)  # fmt: skip
    ours = adapter.sample(seeds)
    theirs = own_loop(net, scheduler, seeds, (4, 6), STEPS, offset=1)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # the same network through DiffusersAdapter: no config needed, the timestep as the scheduler gives it
    plain = DiffusersAdapter(net, scheduler, (4, 6), last_layer="nnet.decoder_pred", steps=STEPS)
    torch.testing.assert_close(plain.sample(seeds), own_loop(net, scheduler, seeds, (4, 6), STEPS), rtol=1e-4,
                               atol=1e-4)  # fmt: skip
    batch = (torch.rand(5, 4, 6) * 2 - 1,)
    assert plain.loss(batch, torch.arange(5)).shape == (5,) and adapter.loss(batch, torch.arange(5)).shape == (5,)
    # the baselines walk DDIM: on a scheduler's samples they would score another path, so they refuse
    from genunc_lightning.uncertainty.baselines import BayesDiff

    with pytest.raises(ValueError, match=f"no scheduler.*with the scheduler {name}"):
        BayesDiff().score(adapter, None, seeds, None, STEPS)


def test_a_scheduler_of_another_forward_process_is_refused():
    net = UViTLike()
    kwargs = dict(num_train_steps=100, schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    linear = make_scheduler("UniPCMultistepScheduler", {})
    with pytest.raises(ValueError, match="ᾱ differs from this adapter's schedule by up to .*beta_schedule"):
        GaussianDiffusionAdapter(net, "nnet.decoder_pred", (4, 6), scheduler=linear, **kwargs)
    scaled = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    v = make_scheduler("UniPCMultistepScheduler", {**scaled, "prediction_type": "v_prediction"})
    with pytest.raises(ValueError, match="prediction_type='v_prediction'.*predicts 'eps'.*prediction_type='epsilon'"):
        GaussianDiffusionAdapter(net, "nnet.decoder_pred", (4, 6), scheduler=v, **kwargs)
    with pytest.raises(ValueError, match="has 1000 training timesteps, this adapter 100"):
        GaussianDiffusionAdapter(net, "nnet.decoder_pred", (4, 6), scheduler=diffusers.UniPCMultistepScheduler(),
                                 **kwargs)  # fmt: skip
    ok = make_scheduler("UniPCMultistepScheduler", scaled)
    with pytest.raises(ValueError, match="A scheduler replaces the built-in sampler"):
        GaussianDiffusionAdapter(net, "nnet.decoder_pred", (4, 6), scheduler=ok, sampler="ddpm", **kwargs)


def test_a_runs_identity_names_its_scheduler(tiny_unet):
    unet = tiny_unet(num_classes=None)
    entries = [DiffusersAdapter(unet, make_scheduler(name, {}), (1, 8, 8)).manifest_entry()
               for name in ("DDIMScheduler", "UniPCMultistepScheduler")]  # fmt: skip
    assert entries[0]["fingerprint"] == entries[1]["fingerprint"]
    assert entries[0]["scheduler"]["class"] == "DDIMScheduler" and entries[0] != entries[1]
    karras = DiffusersAdapter(
        unet, make_scheduler("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}), (1, 8, 8)
    )
    plain = DiffusersAdapter(unet, make_scheduler("DPMSolverMultistepScheduler", {}), (1, 8, 8))
    assert karras.manifest_entry()["scheduler"] != plain.manifest_entry()["scheduler"]


def test_a_config_names_the_scheduler_by_class_path():
    """What LightningCLI does with ``model.adapter.init_args.scheduler: {class_path: ...}`` in a YAML config."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--adapter", type=GaussianDiffusionAdapter)
    scaled = {"num_train_timesteps": 100, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    init_args = {
        "denoiser": {"class_path": "tests.test_schedulers.UViTLike"},
        "last_layer": "nnet.decoder_pred",
        "sample_shape": [4, 6],
        "num_train_steps": 100,
        "schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "timestep_offset": 1,
        "scheduler": {"class_path": "diffusers.UniPCMultistepScheduler", "init_args": scaled},
    }
    config = parser.parse_object(
        {"adapter": {"class_path": "genunc_lightning.adapters.GaussianDiffusionAdapter", "init_args": init_args}}
    )
    adapter = parser.instantiate(config).adapter
    assert type(adapter.scheduler).__name__ == "UniPCMultistepScheduler" and adapter.timestep_offset == 1
    assert adapter.sample(torch.tensor([0, 1]), steps=3).shape == (2, 4, 6)


def test_a_built_in_samplers_identity_is_the_one_version_0_5_wrote():
    """Without a scheduler the identity is 0.5's (printed by cd471a8), so a 0.5 run directory still resumes."""
    from genunc_lightning.models import MLPDenoiser

    settings = GaussianDiffusionAdapter(MLPDenoiser(hidden=8, depth=1), "out", (2,), steps=10).manifest_entry()
    assert settings["settings"] == {
        "clip_denoised": False, "ddpm_variance": "fixed_small", "eta": 0.0, "image_range": None, "last_layer": "out",
        "num_classes": None, "num_train_steps": 1000, "output_channels": None, "prediction": "eps",
        "sample_shape": [2], "sampler": "ddim", "steps": 10, "timestep_offset": 0, "timestep_respacing": None,
        "vae": None,
    }  # fmt: skip
    assert "scheduler" not in settings
