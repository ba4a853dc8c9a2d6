"""The eps-prediction network of Scenario B: a diffusers ``UNet2DModel`` behind a plain ``(x_t, t) -> eps`` call."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import UNet2DModel
from torch import nn


class UNetEps(nn.Module):
    """eps_theta(x_t, t) (paper Alg. 3) with a diffusers UNet2DModel; every keyword goes to the UNet."""

    def __init__(self, **unet_kwargs) -> None:
        super().__init__()
        # plain lists (not Hydra's ListConfig), so that the UNet's config saves as JSON (save_pretrained)
        plain = {k: list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v for k, v in unet_kwargs.items()}
        self.unet = UNet2DModel(**plain)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
