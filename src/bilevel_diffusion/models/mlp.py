"""The eps-network of the 2-D testbed (``model=mlp_points``, ``docs/testbed.md``): an MLP on sinusoidal
embeddings of each coordinate and of the timestep (raw coordinates alone leave a small MLP unable to resolve
modes 0.4 apart; the embedding of ``x * x_scale`` fixes that)."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal(values: torch.Tensor, dim: int) -> torch.Tensor:
    """``[B] -> [B, dim]``: sines and cosines of ``values`` at ``dim / 2`` frequencies from 1 down to 1e-4."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half, device=values.device) / half)
    angles = values.float().reshape(-1, 1) * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class MLPEps(nn.Module):
    """eps_theta(x_t, t) (paper Alg. 3) for points ``[B, dim]``: ``layers`` SiLU layers of width ``hidden``."""

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3, embed_dim: int = 32,
                 x_scale: float = 25.0) -> None:
        super().__init__()
        self.dim, self.embed_dim, self.x_scale = int(dim), int(embed_dim), float(x_scale)
        widths = [(self.dim + 1) * self.embed_dim] + [int(hidden)] * int(layers)
        blocks: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            blocks += [nn.Linear(width_in, width_out), nn.SiLU()]
        self.net = nn.Sequential(*blocks, nn.Linear(widths[-1], self.dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        coordinates = [sinusoidal(x[:, i] * self.x_scale, self.embed_dim) for i in range(self.dim)]
        timestep = sinusoidal(t.expand(x.shape[0]) if t.dim() == 0 else t, self.embed_dim)
        return self.net(torch.cat([*coordinates, timestep], dim=1))

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
