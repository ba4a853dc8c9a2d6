"""``upper_estimator=zeroth_order``: the first-order penalty method of paper Alg. 6 (SPEC §1.2).

Two pieces of maths, kept free of any network or data so they can be checked on toy problems (SPEC §4):

- :func:`two_point_gradient`: the zeroth-order (two-point Gaussian-smoothing) estimate of the gradient of an
  objective that can only be evaluated, such as the FID of DDIM samples;
- :func:`penalty_gradients`: the gradients of the penalty reformulation with two lower-level copies
  (``theta_y`` solves the plain lower problem, ``theta_z`` the penalised one)::

      d theta_z = gradF_ZO(theta_z) / gamma + grad_theta L(theta_z; q)
      d q       = gradF_ZO(q) / gamma + grad_q L(theta_z; q) - grad_q L(theta_y; q)      (Danskin)

:class:`ZerothOrderEstimator` holds the method's settings (the config group); the loop that applies them to a
diffusion model lives in :mod:`bilevel_diffusion.tasks.schedule_bilevel`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from bilevel_diffusion import distributed
from bilevel_diffusion.errors import ConfigError, check_policy

#: ``objective(seed) -> value``; both evaluations of one direction get the same seed (common random numbers)
Objective = Callable[[int], float]


@dataclass
class ZOEstimate:
    """A zeroth-order gradient, one tensor per parameter, and the mean of the objective values it used."""

    grads: list[torch.Tensor]
    mean_value: float
    evaluations: int
    skipped_directions: int


def two_point_gradient(params: Sequence[torch.Tensor], objective: Objective, delta: float, num_directions: int,
                       generator: torch.Generator, scale: Sequence[torch.Tensor | float] | None = None) -> ZOEstimate:
    """Two-point Gaussian-smoothing gradient of ``objective`` at ``params`` (paper Alg. 6, SPEC §1.2)::

        g = 1/m sum_k (f(w + delta S v_k) - f(w - delta S v_k)) / (2 delta) * S^-1 v_k,    v_k ~ N(0, I)

    ``S = diag(scale)`` (default identity) smooths anisotropically, i.e. isotropically in the coordinates
    ``w / S``; ``g`` estimates the gradient in the original coordinates either way. The parameters are perturbed
    in place and restored exactly. Each direction draws one seed and passes it to both of its evaluations, so an
    objective that draws its sampling noise from that seed uses common random numbers. A direction whose two values
    are not both finite contributes nothing and is counted in ``skipped_directions``.
    """
    if delta <= 0 or num_directions < 1:
        raise ConfigError(f"zeroth-order smoothing needs delta > 0 and at least one direction "
                          f"(got delta={delta}, directions={num_directions})")
    scales = list(scale) if scale is not None else [1.0] * len(params)
    saved = [p.detach().clone() for p in params]
    grads = [torch.zeros_like(w) for w in saved]
    values: list[float] = []
    skipped = 0
    try:
        with torch.no_grad():
            for _ in range(num_directions):
                seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
                directions = [torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device) for w in saved]
                pair = []
                for sign in (1.0, -1.0):
                    for p, w, v, s in zip(params, saved, directions, scales):
                        p.copy_(w + (sign * delta) * s * v)
                    pair.append(float(objective(seed)))
                values.extend(pair)
                if not all(map(math.isfinite, pair)):
                    skipped += 1
                    continue
                coefficient = (pair[0] - pair[1]) / (2.0 * delta * num_directions)
                for g, v, s in zip(grads, directions, scales):
                    g.add_(coefficient * v / s)
    finally:
        with torch.no_grad():
            for p, w in zip(params, saved):
                p.copy_(w)
    finite = [v for v in values if math.isfinite(v)]
    return ZOEstimate(grads, sum(finite) / len(finite) if finite else math.nan, len(values), skipped)


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


@dataclass
class PenaltyGradients:
    """The assembled update directions of one outer step, and what went into them (for the logs)."""

    upper: torch.Tensor
    penalised: list[torch.Tensor]
    objective: float
    lower_penalised: float
    lower_plain: float
    norms: dict[str, float]
    skipped_directions: int


def penalty_gradients(upper: torch.Tensor, penalised: Sequence[torch.Tensor],
                      lower_penalised: Callable[[], torch.Tensor], lower_plain: Callable[[], torch.Tensor],
                      objective: Objective, gamma: float, delta_upper: float, delta_penalised: float,
                      num_directions: int, generator: torch.Generator,
                      upper_scale: torch.Tensor | float = 1.0) -> PenaltyGradients:
    """Gradients of the penalty method at (q, theta_z, theta_y) (paper Alg. 6; SPEC §1.2, Danskin)::

        upper     = ZO_q f / gamma + grad_q L(theta_z; q) - grad_q L(theta_y; q)
        penalised = ZO_z f / gamma + grad_z L(theta_z; q)

    ``upper`` is the upper variable q (a leaf tensor); ``penalised`` are theta_z's tensors; ``lower_penalised()`` and
    ``lower_plain()`` return L(theta_z; q) and L(theta_y; q) with graphs to q (and to theta_z for the first); the
    f-gradients are zeroth-order (:func:`two_point_gradient`, ``upper_scale`` = per-coordinate smoothing scale of q).
    All terms are evaluated at the same point (a simultaneous update). With ``hardware=ddp`` the two losses are this
    rank's share of the batch loss and their gradients (and values) are summed over the ranks.
    """
    if gamma <= 0:
        raise ConfigError(f"the penalty constant gamma must be > 0 (got {gamma})")
    penalised = list(penalised)
    zo_z = two_point_gradient(penalised, objective, delta_penalised, num_directions, generator)
    zo_q = two_point_gradient([upper], objective, delta_upper, num_directions, generator, scale=[upper_scale])
    loss_z = lower_penalised()
    grad_q_z, *grad_z = torch.autograd.grad(loss_z, [upper, *penalised])
    loss_y = lower_plain()
    (grad_q_y,) = torch.autograd.grad(loss_y, [upper])
    distributed.sum_tensors([grad_q_z, *grad_z, grad_q_y])  # hardware=ddp: the shards' shares of the batch
    upper_grad = zo_q.grads[0] / gamma + grad_q_z - grad_q_y
    penalised_grads = [zo / gamma + g for zo, g in zip(zo_z.grads, grad_z)]
    evaluations = zo_z.evaluations + zo_q.evaluations
    mean = (zo_z.mean_value * zo_z.evaluations + zo_q.mean_value * zo_q.evaluations) / evaluations
    norms = {"gnorm_zo_q": _norm(zo_q.grads), "gnorm_sm_z_q": _norm([grad_q_z]), "gnorm_sm_y_q": _norm([grad_q_y]),
             "gnorm_zo_z": _norm(zo_z.grads), "gnorm_sm_z": _norm(grad_z)}
    return PenaltyGradients(upper_grad, penalised_grads, mean, distributed.sum_scalar(loss_z.detach()),
                            distributed.sum_scalar(loss_y.detach()), norms,
                            zo_z.skipped_directions + zo_q.skipped_directions)


class ZerothOrderEstimator:
    """Settings of paper Alg. 6 (``configs/upper_estimator/zeroth_order.yaml``), checked on construction.

    The theta_y step budget is ``lower_solver.num_steps`` (as for a fixed-schedule run). One outer step is
    ``inner_steps`` theta_y steps (the last one takes what is left); after the first ``warmup_fraction`` of the
    outer steps (schedule frozen) each outer step also takes one theta_z step and one schedule step. gamma grows
    linearly from ``gamma`` to ``gamma_end`` over the bilevel outer steps (``gamma_end: null`` keeps it constant).
    ``on_nonfinite``: a NaN/Inf schedule hyper-gradient or theta_z gradient stops the run (``stop``) or skips that
    outer step's theta_z and schedule update (``skip``).
    """

    def __init__(self, name: str = "zeroth_order", inner_steps: int = 10, warmup_fraction: float = 0.5,
                 gamma: float = 1.0, gamma_end: float | None = None, num_directions: int = 1, delta: float = 0.01,
                 delta_z: float = 0.01, n_obj: int = 36, obj_inference_steps: int = 10, obj_batch_size: int = 500,
                 schedule_lr: float = 0.02, lr_z: float = 1.0e-3, on_nonfinite: str = "stop") -> None:
        gamma_end = gamma if gamma_end is None else gamma_end
        checks = [(inner_steps >= 1, f"inner_steps must be >= 1 (got {inner_steps})"),
                  (0 <= warmup_fraction < 1, f"warmup_fraction must be in [0, 1) (got {warmup_fraction})"),
                  (gamma > 0 and gamma_end > 0, f"gamma and gamma_end must be > 0 (got {gamma}, {gamma_end})"),
                  (num_directions >= 1, f"num_directions must be >= 1 (got {num_directions})"),
                  (delta > 0 and delta_z > 0, f"delta and delta_z must be > 0 (got {delta}, {delta_z})"),
                  (n_obj >= 2, f"n_obj must be >= 2, FID needs two samples (got {n_obj})"),
                  (obj_inference_steps >= 1, f"obj_inference_steps must be >= 1 (got {obj_inference_steps})"),
                  (obj_batch_size >= 1, f"obj_batch_size must be >= 1 (got {obj_batch_size})"),
                  (schedule_lr > 0 and lr_z > 0, f"schedule_lr and lr_z must be > 0 (got {schedule_lr}, {lr_z})")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"upper_estimator.{message}")
        self.name, self.inner_steps, self.warmup_fraction = name, int(inner_steps), float(warmup_fraction)
        self.gamma_start, self.gamma_end = float(gamma), float(gamma_end)
        self.num_directions, self.delta, self.delta_z = int(num_directions), float(delta), float(delta_z)
        self.n_obj, self.obj_inference_steps = int(n_obj), int(obj_inference_steps)
        self.obj_batch_size, self.schedule_lr, self.lr_z = int(obj_batch_size), float(schedule_lr), float(lr_z)
        self.on_nonfinite = check_policy(on_nonfinite, "upper_estimator.on_nonfinite")

    def outer_steps(self, lower_steps: int) -> tuple[int, int]:
        """(warm-up outer steps, bilevel outer steps) for ``lower_steps`` theta_y steps in all."""
        if lower_steps < 1:
            raise ConfigError(f"upper_estimator=zeroth_order needs lower_solver.num_steps >= 1 (got {lower_steps})")
        total = -(-lower_steps // self.inner_steps)
        warmup = int(self.warmup_fraction * total)
        return warmup, total - warmup

    def gamma(self, bilevel_step: int, bilevel_steps: int) -> float:
        """gamma at bilevel outer step ``bilevel_step`` (0-based) of ``bilevel_steps``: linear ramp, last = end."""
        fraction = bilevel_step / (bilevel_steps - 1) if bilevel_steps > 1 else 1.0
        return self.gamma_start + (self.gamma_end - self.gamma_start) * fraction
