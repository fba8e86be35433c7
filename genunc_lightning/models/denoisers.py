"""Small denoisers for the toy data and small images; last layers named like ADM's (``out``, ``out.2``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, shape [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb.to(t.dtype if t.is_floating_point() else torch.float32)


class MLPDenoiser(nn.Module):
    """MLP denoiser for low-dimensional data; its last layer is ``out`` (nn.Linear).

    Args:
        data_dim: dimension of a data point.
        hidden: width of the hidden layers.
        depth: number of hidden layers.
        num_classes: classes for a conditional model, or ``None``.
        time_dim: size of the timestep embedding.
    """

    def __init__(
        self, data_dim: int = 2, hidden: int = 128, depth: int = 3, num_classes: int | None = None, time_dim: int = 32
    ) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.time = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label = nn.Embedding(num_classes, hidden) if num_classes else None
        self.inp = nn.Linear(data_dim, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth))
        self.act = nn.SiLU()
        self.out = nn.Linear(hidden, data_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predicts the target (ε, v or x0, as trained) for noisy points ``x`` at times ``t``."""
        cond = self.time(timestep_embedding(t, self.time_dim).to(x.dtype))
        if self.label is not None and y is not None:
            cond = cond + self.label(y)
        h = self.inp(x) + cond
        for block in self.blocks:
            h = h + block(h)
        return self.out(self.act(h))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv residual block with an added time/class embedding."""

    def __init__(self, cin: int, cout: int, emb: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2 = nn.GroupNorm(min(groups, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Residual update of ``x`` given the embedding."""
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.act(self.norm2(h)))
        return self.skip(x) + h


class SmallUNet(nn.Module):
    """A small ADM-style UNet; its last layer is ``out.2`` (3×3 nn.Conv2d), as in ADM.

    Args:
        in_channels: image channels.
        base_channels: channels at the first resolution.
        channel_mults: channel multiplier per resolution (each after the first halves the size).
        num_classes: classes for a conditional model, or ``None``.
        learn_sigma: double the output channels as ADM does (the extra half is ignored by the
            adapter's ``output_channels``).
        groups: GroupNorm groups.
        num_res_blocks: residual blocks per resolution.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2),
        num_classes: int | None = None,
        learn_sigma: bool = False,
        groups: int = 8,
        num_res_blocks: int = 1,
    ) -> None:
        super().__init__()
        emb = base_channels * 4
        self.base_channels = base_channels
        self.time = nn.Sequential(nn.Linear(base_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label = nn.Embedding(num_classes, emb) if num_classes else None
        self.inp = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        chans = [base_channels * m for m in channel_mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = base_channels
        for i, ch in enumerate(chans):
            blocks = [ResBlock(c if j == 0 else ch, ch, emb, groups) for j in range(num_res_blocks)]
            self.down.append(nn.ModuleList(blocks))
            c = ch
            self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1) if i < len(chans) - 1 else nn.Identity())
        self.mid = ResBlock(c, c, emb, groups)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, ch in reversed(list(enumerate(chans))):
            self.up.append(
                nn.ModuleList(ResBlock(c + ch if j == 0 else ch, ch, emb, groups) for j in range(num_res_blocks))
            )
            c = ch
            self.upsample.append(nn.Upsample(scale_factor=2, mode="nearest") if i > 0 else nn.Identity())
        out_ch = in_channels * (2 if learn_sigma else 1)
        self.out = nn.Sequential(nn.GroupNorm(min(groups, c), c), nn.SiLU(), nn.Conv2d(c, out_ch, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predicts the target for noisy images ``x`` at timesteps ``t``."""
        emb = self.time(timestep_embedding(t, self.base_channels).to(x.dtype))
        if self.label is not None and y is not None:
            emb = emb + self.label(y)
        h = self.inp(x)
        skips = []
        for blocks, down in zip(self.down, self.downsample, strict=True):
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
            h = down(h)
        h = self.mid(h, emb)
        for blocks, up in zip(self.up, self.upsample, strict=True):
            h = torch.cat([h, skips.pop()], dim=1)
            for block in blocks:
                h = block(h, emb)
            h = up(h)
        return self.out(h)
