"""The exact eps-model of a Gaussian data distribution (the "pre-trained model" of ``task=finetune_gaussian``)."""

from __future__ import annotations

import torch
from torch import nn


class GaussianEps(nn.Module):
    """eps*(x_t, t) for data N(mean, diag(var)) under ``alphas_cumprod``: no training, no approximation.

    x_t ~ N(sqrt(abar) mean, abar var + 1 - abar), so eps* = -sqrt(1 - abar) grad log p_t
    = sqrt(1 - abar) (x_t - sqrt(abar) mean) / (abar var + 1 - abar).
    """

    def __init__(self, mean: torch.Tensor, var: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.double())
        self.register_buffer("var", var.double())
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().double())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.alphas_cumprod[t].view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        mean, var = self.mean.to(x.dtype), self.var.to(x.dtype)
        return (1 - abar).sqrt() * (x - abar.sqrt() * mean) / (abar * var + 1 - abar)
