"""Your own model: an MLP eps-network for 28x28 digits. Copy ``examples/configs/model/mlp_eps.yaml`` to
``configs/model/`` and train it under any schedule or with any Scenario B estimator:

    python run.py task=train_mnist model=mlp_eps
    python run.py task=noise_schedule_mnist model=mlp_eps upper_estimator=zeroth_order
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MLPEps(nn.Module):
    """eps(x_t, t): the flattened image and a sinusoidal embedding of t through an MLP."""

    def __init__(self, hidden: int = 512, time_dim: int = 32, pixels: int = 28 * 28) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.net = nn.Sequential(nn.Linear(pixels + time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, pixels))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        half = self.time_dim // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=x.device) / half)
        angles = t.float().view(-1, 1).expand(x.shape[0], 1) * freqs
        h = torch.cat([x.flatten(1), angles.sin(), angles.cos()], dim=1)
        return self.net(h).view_as(x)
