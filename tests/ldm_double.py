"""A faithful test double of CompVis latent-diffusion's LatentDiffusion interface (tiny, random)."""

import torch
from lightning.pytorch import LightningModule
from torch import nn

from genunc_lightning.models import timestep_embedding


class TinyOpenAIUNet(nn.Module):
    """Shaped like ldm's UNetModel: forward(x, timesteps, context), last layer out.2."""

    def __init__(self, channels=2, hidden=16, context_dim=8):
        super().__init__()
        self.input_blocks = nn.Conv2d(channels, hidden, 3, padding=1)
        self.time_embed = nn.Linear(hidden, hidden)
        self.context = nn.Linear(context_dim, hidden)
        self.out = nn.Sequential(nn.GroupNorm(4, hidden), nn.SiLU(), nn.Conv2d(hidden, channels, 3, padding=1))

    def forward(self, x, timesteps, context=None):
        h = self.input_blocks(x) + self.time_embed(timestep_embedding(timesteps, 16).to(x.dtype))[:, :, None, None]
        if context is not None:
            h = h + self.context(context.mean(1))[:, :, None, None]
        return self.out(torch.tanh(h))


class DiffusionWrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.diffusion_model = TinyOpenAIUNet()

    def forward(self, x, t, c_crossattn=None):
        return self.diffusion_model(x, t, context=torch.cat(c_crossattn, 1) if c_crossattn else None)


class TinyAutoencoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(1, 2, 2, stride=2)
        self.dec = nn.ConvTranspose2d(2, 1, 2, stride=2)

    def encode(self, x):
        return self.enc(x)

    def decode(self, z):
        return torch.tanh(self.dec(z))


class ClassEmbedder(nn.Module):
    def __init__(self, n_classes=3, embed_dim=8, key="class_label"):
        super().__init__()
        self.key, self.embedding = key, nn.Embedding(n_classes, embed_dim)

    def forward(self, batch, key=None):
        return self.embedding(batch[key or self.key][:, None])


class FakeLatentDiffusion(LightningModule):
    """apply_model, alphas_cumprod, num_timesteps, parameterization, get_input (BHWC images, as theirs),
    get_learned_conditioning, decode_first_stage, first_stage_key, scale_factor."""

    first_stage_key = "image"
    cond_stage_key = "class_label"

    def __init__(self, parameterization="eps", timesteps=1000):
        super().__init__()
        self.parameterization, self.num_timesteps, self.scale_factor = parameterization, timesteps, 0.5
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, timesteps, dtype=torch.float64) ** 2  # "linear" in ldm
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, 0).float())
        self.model = DiffusionWrapper()
        self.first_stage_model = TinyAutoencoder()
        self.cond_stage_model = ClassEmbedder()
        self.cond_stage_trainable = True

    def get_learned_conditioning(self, c):
        return self.cond_stage_model(c)

    @torch.no_grad()
    def get_input(self, batch, k, return_first_stage_outputs=False, force_c_encode=False, cond_key=None, bs=None):
        x = batch[k]
        x = x.permute(0, 3, 1, 2).contiguous().float()  # their datasets yield b h w c
        z = self.scale_factor * self.first_stage_model.encode(x)
        c = {self.cond_stage_key: batch[self.cond_stage_key]}
        if not self.cond_stage_trainable or force_c_encode:
            c = self.get_learned_conditioning(c)
        return [z, c]

    def apply_model(self, x_noisy, t, cond, return_ids=False):
        return self.model(x_noisy, t, c_crossattn=[cond])

    @torch.no_grad()
    def decode_first_stage(self, z):
        return self.first_stage_model.decode(z / self.scale_factor)


class CharacterEmbedder(nn.Module):
    """A text conditioning stage like their FrozenCLIPEmbedder: a list of strings to [B, tokens, dim]."""

    def __init__(self, tokens=6, embed_dim=8):
        super().__init__()
        self.tokens, self.embedding = tokens, nn.Embedding(128, embed_dim)

    def forward(self, texts):
        ids = torch.zeros(len(texts), self.tokens, dtype=torch.long)
        for i, text in enumerate(texts):
            codes = [min(ord(c), 127) for c in text[: self.tokens]]
            ids[i, : len(codes)] = torch.tensor(codes, dtype=torch.long)
        return self.embedding(ids.to(self.embedding.weight.device))


class FakeTextLatentDiffusion(FakeLatentDiffusion):
    """The txt2img configuration: cond_stage_key "caption", a frozen text embedder, captions in the batch."""

    cond_stage_key = "caption"

    def __init__(self, parameterization="eps", timesteps=1000):
        super().__init__(parameterization, timesteps)
        self.cond_stage_model = CharacterEmbedder()
        self.cond_stage_trainable = False

    def get_learned_conditioning(self, c):
        return self.cond_stage_model(c)

    @torch.no_grad()
    def get_input(self, batch, k, return_first_stage_outputs=False, force_c_encode=False, cond_key=None, bs=None):
        x = batch[k].permute(0, 3, 1, 2).contiguous().float()
        return [self.scale_factor * self.first_stage_model.encode(x), self.get_learned_conditioning(batch["caption"])]
