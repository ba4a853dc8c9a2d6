"""DDIM sampling (paper Alg. 4) through diffusers' DDIMScheduler built from our betas."""

from __future__ import annotations

import torch
from torch import nn

from bilevel_diffusion.evaluation import fixed_noise
from bilevel_diffusion.sampling.ddim import ddim_sample, make_ddim_scheduler
from bilevel_diffusion.schedules.family import CosineSchedule


class PointMassEps(nn.Module):
    """The exact eps-prediction for data that is a single point c: eps = (x - sqrt(abar) c) / sqrt(1 - abar)."""

    def __init__(self, alphas_cumprod: torch.Tensor, c: torch.Tensor) -> None:
        super().__init__()
        self.abar, self.c = alphas_cumprod.float(), c

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.abar[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * self.c) / (1 - a).sqrt()


def test_ddim_with_the_exact_score_of_a_point_mass_returns_the_point() -> None:
    schedule = CosineSchedule(start=0.0, end=1.0, tau=1.0, eps=0.008)
    c = torch.linspace(-0.8, 0.8, 28 * 28).view(1, 1, 28, 28)
    model = PointMassEps(schedule.alphas_cumprod(), c)
    images, nfe = ddim_sample(model, make_ddim_scheduler(schedule.betas(), clip_sample=False), fixed_noise(4, 0), 20)
    assert nfe == 4 * 20
    assert torch.allclose(images, c.expand_as(images), atol=1e-3)


def test_ddim_is_deterministic_given_the_noise() -> None:
    torch.manual_seed(0)
    model = nn.Conv2d(1, 1, 3, padding=1)
    wrapped = lambda x, t: model(x) * (t.float().view(-1, 1, 1, 1) / 1000)  # noqa: E731
    wrapped.eval = lambda: None
    scheduler = make_ddim_scheduler(CosineSchedule(start=0.0, end=1.0, tau=1.0, eps=0.008).betas())
    first, _ = ddim_sample(wrapped, scheduler, fixed_noise(6, 3), 10, batch_size=4)
    second, _ = ddim_sample(wrapped, scheduler, fixed_noise(6, 3), 10, batch_size=6)
    other, _ = ddim_sample(wrapped, scheduler, fixed_noise(6, 4), 10)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
