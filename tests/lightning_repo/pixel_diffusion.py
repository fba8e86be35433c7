"""A small Lightning diffusion repository, written the way public ones are (the test fixture of issue 13).

What makes it awkward for a plug-in, on purpose: the constructor's arguments are untyped and one is a
class; ``save_hyperparameters`` stores that class in every checkpoint; ``training_step`` rescales
the [0, 1] data to [-1, 1]; and ``forward`` is the whole DDPM sampler (σ² = β), not the denoiser.
"""

import math

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn


class TinyUNet(nn.Module):
    """The repository's noise-prediction network: ε(x_t, t)."""

    def __init__(self, channels=1, hidden=16):
        super().__init__()
        self.inp = nn.Conv2d(channels, hidden, 3, padding=1)
        self.time = nn.Linear(16, hidden)
        self.mid = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.head = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x, t):
        half = torch.arange(8, device=x.device) / 8
        angles = t.float()[:, None] * torch.exp(-math.log(1000) * half)[None]
        emb = self.time(torch.cat([angles.sin(), angles.cos()], 1))[:, :, None, None]
        h = F.silu(self.inp(x) + emb)
        return self.head(F.silu(self.mid(h)) + h)


class PixelDiffusion(pl.LightningModule):
    def __init__(self, backbone=TinyUNet, hidden=16, timesteps=100, lr=2e-3, image_size=8):
        super().__init__()
        self.save_hyperparameters()
        self.model = backbone(1, hidden)
        self.timesteps, self.lr, self.image_size = timesteps, lr, image_size
        betas = torch.linspace(1e-4, 0.02, timesteps)
        self.register_buffer("betas", betas)
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, 0))

    def training_step(self, batch, batch_idx):
        x0 = batch[0] * 2 - 1  # the data are [0, 1] images; the model works in [-1, 1]
        t = torch.randint(0, self.timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(self.model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t), noise)
        self.log("loss", loss)
        return loss

    @torch.no_grad()
    def forward(self, batch_size=1):
        """The whole ancestral DDPM sampler, σ² = β_t; samples in [-1, 1]."""
        x = torch.randn(batch_size, 1, self.image_size, self.image_size, device=self.betas.device)
        for t in reversed(range(self.timesteps)):
            beta, a = self.betas[t], self.alphas_cumprod[t]
            eps = self.model(x, torch.full((batch_size,), t, device=x.device))
            x = (x - beta / (1 - a).sqrt() * eps) / (1 - beta).sqrt()
            if t > 0:
                x = x + beta.sqrt() * torch.randn_like(x)
        return x.clamp(-1, 1)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)
