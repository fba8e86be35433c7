"""Tiny denoisers for tests: every supported last-layer type, and ops after the last layer."""

import torch
import torch.nn.functional as F
from torch import nn

from genunc_lightning.models import timestep_embedding


class TokenDenoiser(nn.Module):
    """UViT-like: a Linear last layer applied to every token of x [B, T, D]."""

    def __init__(self, tokens: int = 4, dim: int = 6, hidden: int = 16) -> None:
        super().__init__()
        self.inp = nn.Linear(dim, hidden)
        self.time = nn.Linear(8, hidden)
        self.mix = nn.Linear(tokens, tokens)
        self.decoder_pred = nn.Linear(hidden, dim)

    def forward(self, x, t, y=None):
        h = torch.tanh(self.inp(x) + self.time(timestep_embedding(t, 8).to(x.dtype))[:, None])
        h = h + self.mix(h.transpose(1, 2)).transpose(1, 2)
        return self.decoder_pred(h)


class ConvDenoiser(nn.Module):
    """A conv backbone and a configurable conv last layer; the output is resized back to x's shape
    after the last layer, so strided or dilated layers exercise the ops that follow it."""

    def __init__(self, dims: int, channels: int, last: nn.Module, hidden: int = 4, learn_sigma: bool = False):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        self.dims = dims
        self.inp = conv(channels, hidden, 3, padding=1)
        self.time = nn.Linear(8, hidden)
        self.out = last
        self.learn_sigma = learn_sigma

    def forward(self, x, t, y=None):
        emb = self.time(timestep_embedding(t, 8).to(x.dtype)).view(x.shape[0], -1, *([1] * self.dims))
        h = F.silu(self.inp(x) + emb)
        o = self.out(h)
        if o.shape[2:] != x.shape[2:]:
            mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[self.dims]
            o = F.interpolate(o, size=x.shape[2:], mode=mode, align_corners=False)
        return o
