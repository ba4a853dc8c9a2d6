"""Fréchet distance between two sets of feature vectors (the FID formula without a feature network)."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance


class _Identity(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to ``a`` and ``b`` ([N, D] each; torchmetrics' FID code)."""
    metric = FrechetInceptionDistance(feature=_Identity(a.shape[1]))
    metric.update(b.double(), real=True)
    metric.update(a.double(), real=False)
    return float(metric.compute())
