"""The Scenario B testbed's data (``data=gaussian_grid``, ``docs/testbed.md``): a 2-D mixture of equal-weight
isotropic Gaussians centred on a ``k x k`` grid, drawn once from a seed. A network trains on it in seconds, and
with few DDIM steps the sample quality depends strongly on the noise schedule."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bilevel_diffusion.data.mnist import ImageData
from bilevel_diffusion.errors import ConfigError


@dataclass
class GaussianGrid(ImageData):
    """Points ``[N, 2]`` of the mixture, labelled by their mode; ``centres`` ``[k*k, 2]`` and the modes' ``std``."""

    centres: torch.Tensor = None  # type: ignore[assignment]
    std: float = 0.0

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A random training batch drawn with replacement (a permutation of all 50,000 points per step took ~15%
        of a testbed training step; a batch of 256 repeats a point with probability ~0.5)."""
        idx = torch.randint(0, self.train_x.shape[0], (batch_size,), generator=generator)
        return self.train_x[idx], self.train_y[idx]


def grid_centres(modes_per_side: int, extent: float) -> torch.Tensor:
    """The ``modes_per_side**2`` centres on the square grid over ``[-extent, extent]^2``, row by row."""
    axis = torch.linspace(-extent, extent, modes_per_side)
    return torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)


def load_gaussian_grid(modes_per_side: int = 5, extent: float = 0.8, std: float = 0.05, num_train: int = 50_000,
                       num_heldout: int = 2_000, seed: int = 0) -> GaussianGrid:
    """``num_train`` training and ``num_heldout`` held-out points of the mixture, drawn from ``seed``; every point
    lies within [-1, 1] unless it is more than ``(1 - extent) / std`` standard deviations from its centre."""
    checks = [(modes_per_side >= 1, f"data.modes_per_side must be >= 1 (got {modes_per_side})"),
              (0 < extent < 1, f"data.extent must be in (0, 1) so the modes lie inside [-1, 1] (got {extent})"),
              (std > 0, f"data.std must be > 0 (got {std})"),
              (num_train >= 2 and num_heldout >= 2,
               f"data.num_train and data.num_heldout must be >= 2 (got {num_train}, {num_heldout})")]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    centres = grid_centres(modes_per_side, extent)
    generator = torch.Generator().manual_seed(seed)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        modes = torch.randint(0, centres.shape[0], (n,), generator=generator)
        return centres[modes] + std * torch.randn(n, 2, generator=generator), modes

    train_x, train_y = draw(num_train)
    test_x, test_y = draw(num_heldout)
    return GaussianGrid(train_x, train_y, test_x, test_y, centres=centres, std=float(std))
