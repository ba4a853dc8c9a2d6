"""The schedule oracle (docs/method.md) and differentiability in the schedule parameters."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from bilevel_diffusion.schedules.family import CosineSchedule, LinearSchedule, SigmoidSchedule


def test_cosine_at_standard_parameters_equals_diffusers_squaredcos_cap_v2() -> None:
    ours = CosineSchedule(start=0.0, end=1.0, tau=1.0, eps=0.008).betas().float()
    reference = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").betas
    assert torch.allclose(ours, reference, atol=1e-6, rtol=0)


def test_linear_equals_diffusers_linear() -> None:
    ours = LinearSchedule(beta_start=1e-4, beta_end=0.02).betas().float()
    reference = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").betas
    assert torch.allclose(ours, reference, atol=1e-7, rtol=0)


def test_gradients_reach_every_schedule_parameter() -> None:
    for schedule in (CosineSchedule(start=0.1, end=0.9, tau=1.5, eps=0.01, learnable=True),
                     SigmoidSchedule(start=0.1, end=0.9, tau=0.7, eps=0.01, learnable=True)):
        weights = torch.linspace(0, 1, 1000, dtype=torch.float64)
        (schedule.alphas_cumprod().sqrt() * weights).sum().backward()
        grad = schedule.raw.grad
        assert grad is not None and torch.isfinite(grad).all()
        assert (grad.abs() > 0).all(), f"{schedule.name}: a parameter gets no gradient: {grad}"


def test_gradient_matches_finite_differences() -> None:
    schedule = CosineSchedule(start=0.05, end=0.95, tau=1.3, eps=0.01, learnable=True)
    loss = lambda: schedule.alphas_cumprod()[::50].sqrt().sum()  # noqa: E731
    loss().backward()
    for i in range(4):
        with torch.no_grad():
            schedule.raw[i] += 1e-6
            up = float(loss())
            schedule.raw[i] -= 2e-6
            down = float(loss())
            schedule.raw[i] += 1e-6
        assert abs((up - down) / 2e-6 - float(schedule.raw.grad[i])) < 1e-4 * max(1.0, abs(float(schedule.raw.grad[i])))


def test_normalised_start_shifts_the_beginning_and_still_reaches_noise() -> None:
    late = CosineSchedule(start=0.3, end=1.0, tau=1.0, eps=0.008).alphas_cumprod()
    standard = CosineSchedule(start=0.0, end=1.0, tau=1.0, eps=0.008).alphas_cumprod()
    assert float(late[-1]) < 1e-6, "every setting must reach pure noise at t = T"
    assert float(late[300]) < float(standard[300]), "a later start destroys signal faster"


def test_projection_clamps_into_the_box_and_keeps_start_below_end() -> None:
    box = {"start": (0.0, 0.4), "end": (0.8, 1.0), "tau": (1.0, 4.0), "eps": (0.005, 0.04)}
    schedule = CosineSchedule(start=0.1, end=0.9, tau=2.0, eps=0.01, learnable=True, bounds=box)
    with torch.no_grad():
        schedule.raw.copy_(torch.tensor([-1.0, 7.0, 0.2, 1.0], dtype=torch.float64))
    schedule.project_()
    values = schedule.as_dict()
    for name, (lo, hi) in box.items():
        assert lo <= values[name] <= hi
    assert values["start"] < values["end"]


def _box_grid(low_tau: float, high_tau: float):
    """Every corner and midpoint of the official box (start, end, tau, eps)."""
    import itertools

    return itertools.product((0.0, 0.2, 0.4), (0.8, 0.9, 1.0), (low_tau, (low_tau + high_tau) / 2, high_tau),
                             (0.0, 0.005, 0.04))


def test_chen_normalisation_reaches_pure_noise_over_the_whole_box() -> None:
    for family, taus in ((CosineSchedule, (1.0, 4.0)), (SigmoidSchedule, (0.2, 2.0))):
        for start, end, tau, eps in _box_grid(*taus):
            abar = family(start=start, end=end, tau=tau, eps=eps).alphas_cumprod()
            assert float(abar[-1]) <= 1e-4, (family.__name__, start, end, tau, eps, float(abar[-1]))
            assert float(abar[0]) > 0.9 and bool((abar[1:] <= abar[:-1]).all())


def test_official_normalisation_stops_short_of_noise_when_end_is_below_one_and_agrees_at_end_one() -> None:
    official = CosineSchedule(start=0.0, end=0.8, tau=1.0, eps=0.008, normalisation="official").alphas_cumprod()
    assert 0.05 < float(official[-1]) < 0.15  # f(end)/f(start) = 0.094: the gap the chen form closes
    for family in (CosineSchedule, SigmoidSchedule):
        chen = family(start=0.2, end=1.0, tau=1.5, eps=0.01).alphas_cumprod()
        same = family(start=0.2, end=1.0, tau=1.5, eps=0.01, normalisation="official").alphas_cumprod()
        assert torch.allclose(chen, same, rtol=1e-9, atol=1e-12)


def test_a_fixed_copy_keeps_the_normalisation() -> None:
    import pytest

    from bilevel_diffusion.errors import ConfigError

    learned = CosineSchedule(start=0.0, end=0.9, tau=1.0, eps=0.008, learnable=True, normalisation="official")
    copy = learned.with_values(**learned.as_dict())
    assert copy.normalisation == "official" and not copy.raw.requires_grad
    assert torch.equal(copy.alphas_cumprod(), learned.alphas_cumprod().detach())
    with pytest.raises(ConfigError, match="normalisation"):
        CosineSchedule(start=0.0, end=1.0, tau=1.0, eps=0.008, normalisation="chan")
