"""A faithful test double of Stability sgm's DiffusionEngine interface (tiny, random)."""

import torch
from lightning.pytorch import LightningModule
from torch import nn

from tests.ldm_double import TinyAutoencoder, TinyOpenAIUNet


class OpenAIWrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.diffusion_model = TinyOpenAIUNet()

    def forward(self, x, t, c, **kwargs):
        context = c.get("vector")
        return self.diffusion_model(x, t, context=context[:, None] if context is not None else None)


class EpsScaling:
    def __call__(self, sigma):
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1 / (sigma**2 + 1.0) ** 0.5
        return c_skip, c_out, c_in, sigma.clone()


class DiscreteDenoiser(nn.Module):
    """sgm's: sigmas from the legacy DDPM schedule (ascending), c_noise quantised to the index."""

    def __init__(self, num_idx=1000):
        super().__init__()
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, num_idx, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.register_buffer("sigmas", (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float())
        self.scaling = EpsScaling()

    def sigma_to_idx(self, sigma):
        return (sigma[:, None] - self.sigmas[None]).abs().argmin(1)

    def forward(self, network, input, sigma, cond):
        shape = sigma.shape
        sigma_b = sigma.view(-1, *([1] * (input.ndim - 1)))
        c_skip, c_out, c_in, c_noise = self.scaling(sigma_b)
        c_noise = self.sigma_to_idx(c_noise.reshape(shape))
        return network(input * c_in, c_noise, cond) * c_out + input * c_skip


class GeneralConditioner(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedder = nn.Embedding(3, 8)

    def forward(self, batch):
        return {"vector": self.embedder(batch["cls"])} if "cls" in batch else {}


class FakeDiffusionEngine(LightningModule):
    input_key = "jpg"

    def __init__(self):
        super().__init__()
        self.model = OpenAIWrapper()
        self.denoiser = DiscreteDenoiser()
        self.conditioner = GeneralConditioner()
        self.first_stage_model = TinyAutoencoder()
        self.scale_factor = 0.5

    def get_input(self, batch):
        return batch[self.input_key]

    @torch.no_grad()
    def encode_first_stage(self, x):
        return self.scale_factor * self.first_stage_model.encode(x)

    @torch.no_grad()
    def decode_first_stage(self, z):
        return self.first_stage_model.decode(z / self.scale_factor)
