"""The maths of paper Alg. 6 (``upper_estimator=zeroth_order``), free of any network or data so that it can be
checked on toy problems (``docs/method.md``, Scenario B):

- :func:`two_point_gradient`: the zeroth-order (two-point Gaussian-smoothing) estimate of the gradient of an
  objective that can only be evaluated, such as the FID of DDIM samples;
- :func:`backprop_gradient`: the first-order gradient of an objective that is a torch function of the parameters
  (the FID of DDIM samples back-propagated through the sampler, for theta_z);
- :func:`penalty_gradients`: the gradients of the penalty reformulation with two lower-level copies
  (``theta_y`` solves the plain lower problem, ``theta_z`` the penalised one)::

      d theta_z = gradF(theta_z) / gamma + grad_theta L(theta_z; q)        (gradF: first-order or ZO)
      d q       = gradF_ZO(q) / gamma + grad_q L(theta_z; q) - grad_q L(theta_y; q)      (Danskin)

The loop that applies them to a diffusion model is :mod:`bilevel_diffusion.upper_estimators.zeroth_order`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from bilevel_diffusion import distributed
from bilevel_diffusion.errors import ConfigError

#: ``objective(seed) -> value``; both evaluations of one direction get the same seed (common random numbers)
Objective = Callable[[int], float]


@dataclass
class GradientEstimate:
    """A gradient estimate, one tensor per parameter, and the mean of the objective values it used."""

    grads: list[torch.Tensor]
    mean_value: float
    evaluations: int
    skipped_directions: int
    #: with ``per_direction=True``: each finite direction's own one-direction estimate (their mean is ``grads``)
    directions: list[list[torch.Tensor]] = field(default_factory=list)


def two_point_gradient(params: Sequence[torch.Tensor], objective: Objective, delta: float, num_directions: int,
                       generator: torch.Generator, scale: Sequence[torch.Tensor | float] | None = None,
                       project: Callable[[], None] | None = None, per_direction: bool = False) -> GradientEstimate:
    """Two-point Gaussian-smoothing gradient of ``objective`` at ``params`` (paper Alg. 6, ``docs/method.md``)::

        g = 1/m sum_k (f(w + delta S v_k) - f(w - delta S v_k)) / (2 delta) * S^-1 v_k,    v_k ~ N(0, I)

    ``S = diag(scale)`` (default identity) smooths anisotropically, i.e. isotropically in the coordinates
    ``w / S``; ``g`` estimates the gradient in the original coordinates either way. The parameters are perturbed
    in place and restored exactly. Each direction draws one seed and passes it to both of its evaluations, so an
    objective that draws its sampling noise from that seed uses common random numbers. A direction whose two values
    are not both finite contributes nothing and is counted in ``skipped_directions``.

    ``project`` (in place, e.g. the schedule's ``project_``) keeps the perturbed points in the feasible box: a
    point ``w ± delta S v`` outside it is evaluated at its projection, while the coefficient still multiplies
    ``S^-1 v``. Inside the box (farther than ``delta S |v|`` from an edge) nothing changes; at an edge the component
    pointing out of the box is the one-sided difference (about half the two-sided one, same sign), so the objective
    is never evaluated where it is not defined (``docs/method.md``).

    ``per_direction``: also return every direction's one-direction estimate (for the signal-to-noise of the
    average, at no extra evaluation).
    """
    if delta <= 0 or num_directions < 1:
        raise ConfigError(f"zeroth-order smoothing needs delta > 0 and at least one direction "
                          f"(got delta={delta}, directions={num_directions})")
    scales = list(scale) if scale is not None else [1.0] * len(params)
    saved = [p.detach().clone() for p in params]
    grads = [torch.zeros_like(w) for w in saved]
    values: list[float] = []
    kept: list[list[torch.Tensor]] = []
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
                    if project is not None:
                        project()
                    pair.append(float(objective(seed)))
                values.extend(pair)
                if not all(map(math.isfinite, pair)):
                    skipped += 1
                    continue
                coefficient = (pair[0] - pair[1]) / (2.0 * delta * num_directions)
                for g, v, s in zip(grads, directions, scales):
                    g.add_(coefficient * v / s)
                if per_direction:
                    kept.append([num_directions * coefficient * v / s for v, s in zip(directions, scales)])
    finally:
        with torch.no_grad():
            for p, w in zip(params, saved):
                p.copy_(w)
    finite = [v for v in values if math.isfinite(v)]
    return GradientEstimate(grads, sum(finite) / len(finite) if finite else math.nan, len(values), skipped, kept)


def backprop_gradient(params: Sequence[torch.Tensor], objective: Callable[[], torch.Tensor]) -> GradientEstimate:
    """The gradient of ``objective()`` (a scalar with a graph to ``params``) by autograd; a parameter it does not
    depend on gets zeros, a non-finite value or gradient is reported as one skipped "direction" (zero gradient)."""
    value = objective()
    grads = torch.autograd.grad(value, list(params), allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]
    value = float(value.detach())
    finite = math.isfinite(value) and all(bool(torch.isfinite(g).all()) for g in grads)
    if not finite:
        grads = [torch.zeros_like(g) for g in grads]
    return GradientEstimate(grads, value, 1, 0 if finite else 1)


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
    upper_zo: torch.Tensor  # the zeroth-order part of ``upper`` before the division by gamma
    upper_zo_directions: list[torch.Tensor]  # its one-direction estimates (mean = ``upper_zo``)


def penalty_gradients(upper: torch.Tensor, penalised: Sequence[torch.Tensor],
                      lower_penalised: Callable[[], torch.Tensor], lower_plain: Callable[[], torch.Tensor],
                      objective: Objective, gamma: float, delta_upper: float, num_directions: int,
                      generator: torch.Generator, penalised_gradient: Callable[[], GradientEstimate],
                      upper_scale: torch.Tensor | float = 1.0,
                      upper_project: Callable[[], None] | None = None) -> PenaltyGradients:
    """Gradients of the penalty method at (q, theta_z, theta_y) (paper Alg. 6, ``docs/method.md``; Danskin)::

        upper     = ZO_q f / gamma + grad_q L(theta_z; q) - grad_q L(theta_y; q)
        penalised = grad_z f / gamma + grad_z L(theta_z; q)

    ``upper`` is the upper variable q (a leaf tensor); ``penalised`` are theta_z's tensors; ``lower_penalised()`` and
    ``lower_plain()`` return L(theta_z; q) and L(theta_y; q) with graphs to q (and to theta_z for the first);
    ``penalised_gradient()`` estimates grad_z f (:func:`backprop_gradient` or :func:`two_point_gradient`); the
    q-gradient of f is zeroth-order (:func:`two_point_gradient` on ``objective``, ``upper_scale`` = per-coordinate
    smoothing scale of q, ``upper_project`` keeps its perturbations in q's box).
    All terms are evaluated at the same point (a simultaneous update). With ``hardware=ddp`` the two losses are this
    rank's share of the batch loss and their gradients (and values) are summed over the ranks.
    """
    if gamma <= 0:
        raise ConfigError(f"the penalty constant gamma must be > 0 (got {gamma})")
    penalised = list(penalised)
    zo_z = penalised_gradient()
    zo_q = two_point_gradient([upper], objective, delta_upper, num_directions, generator, scale=[upper_scale],
                              project=upper_project, per_direction=True)
    loss_z = lower_penalised()
    grad_q_z, *grad_z = torch.autograd.grad(loss_z, [upper, *penalised])
    loss_y = lower_plain()
    (grad_q_y,) = torch.autograd.grad(loss_y, [upper])
    distributed.sum_tensors([grad_q_z, *grad_z, grad_q_y])  # hardware=ddp: the shards' shares of the batch
    upper_grad = zo_q.grads[0] / gamma + grad_q_z - grad_q_y
    penalised_grads = [zo / gamma + g for zo, g in zip(zo_z.grads, grad_z)]
    evaluations = zo_z.evaluations + zo_q.evaluations
    mean = (zo_z.mean_value * zo_z.evaluations + zo_q.mean_value * zo_q.evaluations) / evaluations
    penalty_q = _norm([grad_q_z - grad_q_y])
    norms = {"gnorm_zo_q": _norm(zo_q.grads), "gnorm_sm_z_q": _norm([grad_q_z]), "gnorm_sm_y_q": _norm([grad_q_y]),
             "gnorm_f_z": _norm(zo_z.grads), "gnorm_sm_z": _norm(grad_z), "gnorm_penalty_q": penalty_q}
    if penalty_q > 0:  # how the two parts of the q-gradient compare: |ZO_q F / gamma| / |grad_q L(z) - grad_q L(y)|
        norms["term_ratio_q"] = _norm(zo_q.grads) / gamma / penalty_q
    return PenaltyGradients(upper_grad, penalised_grads, mean, distributed.sum_scalar(loss_z.detach()),
                            distributed.sum_scalar(loss_y.detach()), norms,
                            zo_z.skipped_directions + zo_q.skipped_directions, zo_q.grads[0],
                            [d[0] for d in zo_q.directions])
