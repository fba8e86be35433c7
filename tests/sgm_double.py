"""A faithful test double of Stability sgm's DiffusionEngine interface (tiny, random)."""

import torch
from lightning.pytorch import LightningModule
from torch import nn

from tests.ldm_double import CharacterEmbedder, TinyAutoencoder, TinyOpenAIUNet


class OpenAIWrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.diffusion_model = TinyOpenAIUNet()

    def forward(self, x, t, c, **kwargs):
        context = c.get("crossattn", c["vector"][:, None] if "vector" in c else None)
        return self.diffusion_model(x, t, context=context)


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


class TextEmbedder(CharacterEmbedder):
    """sgm's FrozenCLIPEmbedder in miniature: captions to [B, tokens, dim], with ``input_key`` "txt"."""

    input_key = "txt"


class TextConditioner(nn.Module):
    """sgm's GeneralConditioner: each embedder's output under its key; ``force_zero_embeddings`` zeroes some."""

    def __init__(self):
        super().__init__()
        self.embedders = nn.ModuleList([TextEmbedder()])

    def forward(self, batch, force_zero_embeddings=None):
        out = {}
        for embedder in self.embedders:
            emb = embedder(batch[embedder.input_key])
            if embedder.input_key in (force_zero_embeddings or []):
                emb = torch.zeros_like(emb)
            out["crossattn"] = emb
        return out


class FakeTextDiffusionEngine(FakeDiffusionEngine):
    """A text engine (SDXL-like): captions under "txt" in the batch, cross-attention conditioning."""

    def __init__(self):
        super().__init__()
        self.conditioner = TextConditioner()
