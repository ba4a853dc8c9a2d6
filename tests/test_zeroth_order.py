"""Paper Alg. 6 maths: the zeroth-order oracle (docs/method.md), the penalty-gradient assembly, projection, gamma."""

from __future__ import annotations

import math

import pytest
import torch

from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.schedules.family import CosineSchedule
from bilevel_diffusion.upper_estimators.penalty import backprop_gradient, penalty_gradients, two_point_gradient
from bilevel_diffusion.upper_estimators.zeroth_order import BoxAdam, ZerothOrderEstimator

A = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 3.0]], dtype=torch.float64)


def smooth(w: torch.Tensor) -> float:
    """f(w) = sum(sin w) + w'Aw/2, gradient cos(w) + Aw."""
    return float(torch.sin(w).sum() + 0.5 * w @ A @ w)


def smooth_grad(w: torch.Tensor) -> torch.Tensor:
    return torch.cos(w) + A @ w


def _error(num_directions: int, delta: float, seed: int = 0, scale=None) -> float:
    w = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)
    estimate = two_point_gradient([w], lambda _: smooth(w), delta, num_directions, torch.Generator().manual_seed(seed),
                                  scale=scale)
    assert torch.equal(w, torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)), "parameters must be restored"
    truth = smooth_grad(w)
    return float((estimate.grads[0] - truth).norm() / truth.norm())


def test_zeroth_order_estimate_converges_to_the_gradient() -> None:
    errors = [sum(_error(m, 1e-3, seed) for seed in range(3)) / 3 for m in (10, 100, 4_000)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.05, "with many directions and a small radius the estimate is the gradient"
    assert _error(4_000, 1.0) > 3 * _error(4_000, 1e-3), "a large radius smooths the sine away (bias)"


def test_anisotropic_smoothing_still_estimates_the_gradient_in_original_coordinates() -> None:
    assert _error(4_000, 1e-3, scale=[torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)]) < 0.1


def test_both_evaluations_of_a_direction_share_one_seed_and_new_directions_get_new_seeds() -> None:
    seeds: list[int] = []
    w = torch.zeros(2)
    two_point_gradient([w], lambda seed: seeds.append(seed) or 0.0, 0.1, 3, torch.Generator().manual_seed(0))
    assert seeds[0::2] == seeds[1::2] and len(set(seeds)) == 3


def test_a_direction_with_a_non_finite_value_is_skipped() -> None:
    w = torch.zeros(2)
    calls = iter([1.0, math.nan, 3.0, 1.0])
    estimate = two_point_gradient([w], lambda _: next(calls), 0.5, 2, torch.Generator().manual_seed(0))
    assert estimate.skipped_directions == 1 and torch.isfinite(estimate.grads[0]).all()
    assert estimate.mean_value == pytest.approx((1.0 + 3.0 + 1.0) / 3)


def test_penalty_gradient_assembly_on_a_quadratic_toy_problem() -> None:
    """L(w; x) = |w - x|^2 / 2, f(z) = |z - c|^2 / 2: y*(x) = x, z_gamma = (c + gamma x) / (1 + gamma), and
    grad F_gamma(x) = grad_x L(z_gamma; x) - grad_x L(y*; x) = (x - c) / (1 + gamma) exactly (f has no x term, so
    its zeroth-order x-gradient is exactly zero); the penalised gradient f'(z)/gamma + (z - x) vanishes at z_gamma."""
    gamma = 4.0
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    z = ((c + gamma * x.detach()) / (1 + gamma)).requires_grad_()
    y = x.detach().clone().requires_grad_()
    lower = lambda w: lambda: 0.5 * (w - x).pow(2).sum()  # noqa: E731
    objective = lambda _: float(0.5 * (z.detach() - c).pow(2).sum())  # noqa: E731
    grads = penalty_gradients(x, [z], lower(z), lower(y), objective, gamma, 0.01, 10_000,
                              torch.Generator().manual_seed(0),
                              lambda: two_point_gradient([z], objective, 0.01, 10_000, torch.Generator().manual_seed(1)))
    assert torch.allclose(grads.upper, (x.detach() - c) / (1 + gamma), atol=1e-12)
    zo_scale = float((z.detach() - c).norm()) / gamma
    assert float(grads.penalised[0].norm()) < 0.05 * zo_scale
    assert grads.norms["gnorm_zo_q"] == 0.0 and grads.norms["gnorm_sm_y_q"] == 0.0
    assert grads.norms["gnorm_sm_z_q"] == pytest.approx(float((x.detach() - z.detach()).norm()))
    assert grads.objective == pytest.approx(objective(0), rel=1e-3)


def test_backprop_gradient_is_autograd_and_a_non_finite_value_is_skipped() -> None:
    w = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64, requires_grad=True)
    unused = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    estimate = backprop_gradient([w, unused], lambda: torch.sin(w).sum() + 0.5 * w @ A @ w)
    assert torch.allclose(estimate.grads[0], smooth_grad(w.detach())) and torch.equal(estimate.grads[1], torch.zeros(2))
    assert estimate.mean_value == pytest.approx(smooth(w.detach())) and estimate.skipped_directions == 0
    broken = backprop_gradient([w], lambda: (w / 0.0).sum())
    assert broken.skipped_directions == 1 and torch.equal(broken.grads[0], torch.zeros(3, dtype=torch.float64))


def test_the_assembled_q_gradient_points_along_the_true_hypergradient_in_most_repeats() -> None:
    """A toy with a known optimum and both parts of the q-gradient: L(w; x) = |w - x|^2 / 2 (y*(x) = x) and
    F(w, x) = |w - c|^2 / 2 + |x - d|^2 / 2, so the true hyper-gradient of F(y*(x), x) is (x - c) + (x - d). With
    gamma = 1 / theta_z at its penalised optimum (c + gamma x) / (1 + gamma), and F's x-part known only through one
    zeroth-order direction per estimate (as in Alg. 6), the assembled gradient has a positive cosine with the truth
    in most of 200 repeats, and the mean over repeats points along it."""
    gamma = 1.0
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    c, d = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64)
    z = ((c + gamma * x.detach()) / (1 + gamma)).requires_grad_()
    y = x.detach().clone().requires_grad_()
    lower = lambda w: lambda: 0.5 * (w - x).pow(2).sum()  # noqa: E731
    objective = lambda _: float(0.5 * (z.detach() - c).pow(2).sum() + 0.5 * (x.detach() - d).pow(2).sum())  # noqa: E731
    truth = (x.detach() - c) + (x.detach() - d)
    estimates = []
    for seed in range(200):
        grads = penalty_gradients(x, [z], lower(z), lower(y), objective, gamma, 0.01, 1,
                                  torch.Generator().manual_seed(seed),
                                  lambda: backprop_gradient([z], lambda: 0.5 * (z - c).pow(2).sum()))
        estimates.append(grads.upper)
    cosines = torch.tensor([float(g @ truth / (g.norm() * truth.norm())) for g in estimates])
    assert float((cosines > 0).float().mean()) > 0.75
    mean = torch.stack(estimates).mean(0)
    assert float(mean @ truth / (mean.norm() * truth.norm())) > 0.9


def test_box_adam_keeps_the_schedule_in_its_box_and_moves_by_a_fraction_of_it() -> None:
    box = {"start": (0.0, 0.4), "end": (0.8, 1.0), "tau": (1.0, 4.0), "eps": (0.005, 0.04)}
    schedule = CosineSchedule(start=0.2, end=0.9, tau=2.0, eps=0.02, learnable=True, bounds=box)
    adam = BoxAdam(schedule, lr=0.1, total_steps=100)
    adam.step(torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64))
    moved = {k: v for k, v in schedule.as_dict().items()}
    for name, sign in zip(("start", "end", "tau", "eps"), (-1, 1, -1, 1)):
        lo, hi = box[name]
        assert moved[name] - {"start": 0.2, "end": 0.9, "tau": 2.0, "eps": 0.02}[name] == pytest.approx(
            sign * 0.1 * (hi - lo), rel=1e-6)
    for _ in range(60):
        adam.step(torch.tensor([1e6, -1e6, -1e6, 1e6], dtype=torch.float64))
        values = schedule.as_dict()
        assert all(box[k][0] <= values[k] <= box[k][1] for k in box), values
    assert values["start"] == 0.0 and values["end"] == 1.0 and values["tau"] == 4.0 and values["eps"] == 0.005


def test_box_adam_needs_a_box_for_every_parameter() -> None:
    with pytest.raises(ConfigError, match="bounds"):
        BoxAdam(CosineSchedule(start=0.0, end=1.0, tau=1.0, eps=0.008, learnable=True), lr=0.1, total_steps=1)


def test_gamma_is_constant_or_ramped_to_its_end_value() -> None:
    assert [ZerothOrderEstimator(gamma=2.0).gamma(k, 5) for k in range(5)] == [2.0] * 5
    ramp = [ZerothOrderEstimator(gamma=1.0, gamma_end=9.0).gamma(k, 5) for k in range(5)]
    assert ramp == [1.0, 3.0, 5.0, 7.0, 9.0]


def test_outer_steps_split_the_lower_budget_into_warm_up_and_bilevel_steps() -> None:
    assert ZerothOrderEstimator(inner_steps=10, warmup_fraction=0.5).outer_steps(600) == (30, 30)
    assert ZerothOrderEstimator(inner_steps=10, warmup_fraction=0.5).outer_steps(6) == (0, 1)
    assert ZerothOrderEstimator(inner_steps=4, warmup_fraction=0.6).outer_steps(18) == (3, 2)


@pytest.mark.parametrize("kwargs,message", [({"gamma": 0.0}, "gamma"), ({"gamma_end": -1.0}, "gamma"),
                                            ({"delta": 0.0}, "delta"), ({"n_obj": 1}, "n_obj"),
                                            ({"warmup_fraction": 1.0}, "warmup_fraction"),
                                            ({"inner_steps": 0}, "inner_steps")])
def test_bad_settings_are_config_errors(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        ZerothOrderEstimator(**kwargs)


def test_perturbations_of_q_stay_in_its_box_and_keep_the_sign_at_an_edge() -> None:
    """At the lower edge of a box [0, 1]^2 with f(w) = w_0 - w_1 (gradient (1, -1)), every evaluated point is inside
    the box; the inward component keeps the two-sided estimate where the box allows it, the one pointing out of the
    box the one-sided one (about half, same sign)."""
    w = torch.tensor([0.0, 0.5], dtype=torch.float64)
    seen: list[torch.Tensor] = []

    def objective(_: int) -> float:
        seen.append(w.clone())
        return float(w[0] - w[1])

    estimate = two_point_gradient([w], objective, 0.05, 4_000, torch.Generator().manual_seed(0),
                                  project=lambda: w.clamp_(0.0, 1.0))
    points = torch.stack(seen)
    assert bool((points >= 0).all() and (points <= 1).all())
    assert torch.equal(w, torch.tensor([0.0, 0.5], dtype=torch.float64)), "parameters must be restored"
    grad = estimate.grads[0]
    assert 0.4 < float(grad[0]) < 0.6 and -1.1 < float(grad[1]) < -0.9, grad
