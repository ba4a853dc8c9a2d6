"""Sample quality on the 2-D testbed (``docs/testbed.md``), with the interface of
:class:`~bilevel_diffusion.metrics.image_quality.ImageQuality`:

- FID and KID on fixed random Fourier features ``sqrt(2) cos(x W + b)``, ``W ~ N(0, 1/bandwidth^2)``: a kernel
  embedding that resolves structure at the scale ``bandwidth`` (the FID formula on these features is the "Fréchet
  distance on random features" of the testbed; it is differentiable, like the CNN-feature FID);
- IS on the exact mode posteriors of the mixture (the "classifier" is Bayes' rule): exp E KL(p(y|x) || p(y)),
  ``k*k`` when every sample sits clearly in one mode and the modes are equally covered.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bilevel_diffusion.data.gaussian_grid import GaussianGrid
from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.metrics.image_quality import ImageQuality


class RandomFourierFeatures(nn.Module):
    """``[B, dim] -> [B, num_features]``: random Fourier features of a Gaussian kernel of width ``bandwidth``,
    fixed by ``seed`` (each of unit mean square; their inner product / ``num_features`` estimates the kernel)."""

    def __init__(self, dim: int, num_features: int, bandwidth: float, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.num_features = int(num_features)
        self.register_buffer("weight", torch.randn(dim, num_features, generator=generator) / bandwidth)
        self.register_buffer("phase", 2 * math.pi * torch.rand(num_features, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return math.sqrt(2.0) * torch.cos(x.float() @ self.weight + self.phase)


class ModeLogits(nn.Module):
    """``[B, dim] -> [B, k]``: log mode posteriors of the equal-weight mixture, mixed with 1e-6 of the uniform
    distribution so that a set of samples that misses a mode gets a finite IS (torchmetrics takes the log of the
    mean posterior)."""

    def __init__(self, centres: torch.Tensor, std: float) -> None:
        super().__init__()
        self.num_features = int(centres.shape[0])
        self.register_buffer("centres", centres.float())
        self.std = float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        posterior = torch.softmax(-torch.cdist(x.float(), self.centres).pow(2) / (2 * self.std ** 2), dim=1)
        return torch.log((1 - 1e-6) * posterior + 1e-6 / self.num_features)


class PointQuality(ImageQuality):
    """FID / KID on random Fourier features and IS on mode posteriors, against the held-out points of ``data``."""

    def __init__(self, data: GaussianGrid, num_features: int = 256, bandwidth: float = 0.1, seed: int = 0,
                 device: torch.device | str = "cpu", batch_size: int = 2000) -> None:
        if num_features < 2 or bandwidth <= 0:
            raise ConfigError(f"the testbed's FID features need num_features >= 2 and bandwidth > 0 "
                              f"(got {num_features}, {bandwidth})")
        self.features, self.device, self.batch_size = "random_fourier", torch.device(device), int(batch_size)
        dim = data.test_x.shape[1]
        self._use_networks(RandomFourierFeatures(dim, num_features, bandwidth, seed),
                           ModeLogits(data.centres, data.std),
                           f"random Fourier features ({num_features}-d, bandwidth {bandwidth:g}, seed {seed})")
        self._set_real(data.test_x)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images
