"""``task=finetune_gaussian``: the analytic testbed of Scenario A (Gaussian tilt oracle, ``docs/method.md``).

p_pre = N(mean, diag(cov_diag)) with its exact eps-model (no training), r2(x) = a.x (``reward_direction``),
r1(x) = -|x - c|^2 / 2 (``target``). Then p_lambda = N(mean + Sigma a / lambda, Sigma) and

    F(lambda) = -E_{p_lambda}[r1] = (|m_lambda - c|^2 + tr Sigma) / 2,    m_lambda = mean + Sigma a / lambda,
    dF/dlambda = -(m_lambda - c).Sigma a / lambda^2 = Cov_{p_lambda}(r1, r2) / lambda^2,

so F is unimodal in 1/lambda with minimiser 1/lambda* = (c - mean).Sigma a / |Sigma a|^2; ``lambda_star`` in
``summary.json`` is that value projected onto the task's ``lambda_box`` (its upper end when
(c - mean).Sigma a <= 0: then guidance only hurts).

How well N samples can locate lambda* at all: the Monte Carlo hyper-gradient in u = 1/lambda is the sample
Cov(r1, r2), whose root is the estimated u*. By the delta method its sd is sd(Cov_N) / |d Cov / du| =
sqrt(E[r1c^2 r2c^2] / N) / |Sigma a|^2 (r1c, r2c: r1, r2 centred under p_lambda*), and with d = m_lambda* - c,
z ~ N(0, Sigma) (Isserlis; odd moments vanish)

    E[r1c^2 r2c^2] = (d.Sigma d)(a.Sigma a) + 2 (d.Sigma a)^2 + tr(Sigma^2)(a.Sigma a) / 2 + 2 sum_i Sigma_ii^3 a_i^2.

``lambda_star_rel_sd`` in ``summary.json`` is that sd over u* for N = ``pool_samples``: where it is not small the
optimum is flat against the Monte Carlo noise and no N-sample method can pin lambda* down (F is then nearly flat
there too: compare ``objective_exact`` with ``objective_star``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch

from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.metrics.distances import feature_distances
from bilevel_diffusion.models.gaussian import GaussianEps
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.schedules.family import NoiseSchedule
from bilevel_diffusion.task import RewardTask

log = logging.getLogger(__name__)


class GaussianTilt:
    """The closed forms of the Gaussian tilt oracle."""

    def __init__(self, mean: Sequence[float], cov_diag: Sequence[float], direction: Sequence[float],
                 target: Sequence[float]) -> None:
        self.mean, self.var, self.a, self.c = (torch.tensor([float(v) for v in vals], dtype=torch.float64)
                                               for vals in (mean, cov_diag, direction, target))
        if not len(self.mean) == len(self.var) == len(self.a) == len(self.c) or len(self.mean) == 0:
            raise ConfigError("task.mean, task.cov_diag, task.reward_direction and task.target need the same "
                              "non-zero length")
        if not bool((self.var > 0).all()) or not bool(self.a.abs().sum() > 0):
            raise ConfigError("task.cov_diag must be > 0 and task.reward_direction non-zero")
        self.shift = self.var * self.a  # Sigma a

    def tilted_mean(self, lam: float) -> torch.Tensor:
        return self.mean + self.shift / lam

    def objective(self, lam: float) -> float:
        return float(((self.tilted_mean(lam) - self.c) ** 2).sum() + self.var.sum()) / 2

    def gradient(self, lam: float) -> float:
        return float(-((self.tilted_mean(lam) - self.c) * self.shift).sum()) / lam**2

    def lambda_star(self, lambda_min: float, lambda_max: float) -> float:
        inv = float(((self.c - self.mean) * self.shift).sum() / (self.shift**2).sum())
        return lambda_max if inv <= 0 else min(max(1.0 / inv, lambda_min), lambda_max)

    def lambda_star_rel_sd(self, lam_star: float, num_samples: int) -> float:
        """Relative sd of the root u* = 1/lambda* of the N-sample hyper-gradient Cov(r1, r2) (module docstring)."""
        d, a_sigma_a = self.tilted_mean(lam_star) - self.c, float((self.a * self.shift).sum())
        moment = (float((d * self.var * d).sum()) * a_sigma_a + 2 * float((d * self.shift).sum())**2
                  + float((self.var**2).sum()) * a_sigma_a / 2 + 2 * float((self.var**3 * self.a**2).sum()))
        return (moment / num_samples) ** 0.5 / float((self.shift**2).sum()) * lam_star

    def r1(self, x: torch.Tensor) -> torch.Tensor:
        return -((x - self.c.to(x.dtype)) ** 2).sum(1) / 2

    def r2(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.a.to(x.dtype)


class FinetuneGaussian(RewardTask):
    """Scenario A on the Gaussian tilt oracle; ``summary.json`` adds ``lambda_star``, ``lambda_rel_error`` and
    ``lambda_star_rel_sd`` (how well ``pool_samples`` samples can locate lambda*)."""

    def __init__(self, name: str, schedule: NoiseSchedule, mean: Sequence[float] = (0.0, 0.0),
                 cov_diag: Sequence[float] = (1.0, 0.5), reward_direction: Sequence[float] = (1.0, 1.0),
                 target: Sequence[float] = (2.0, 1.0), **settings: Any) -> None:
        super().__init__(name, **settings)
        self.oracle = GaussianTilt(mean, cov_diag, reward_direction, target)
        self.schedule = schedule

    def problem_parts(self, ctx: RunContext) -> dict[str, Any]:
        alphas_cumprod = self.schedule.alphas_cumprod().detach()
        return {"eps_fn": GaussianEps(self.oracle.mean, self.oracle.var, alphas_cumprod),
                "betas": self.schedule.betas().detach(), "sample_shape": (len(self.oracle.mean),),
                "prompts": ["gaussian"], "r1": lambda _: self.oracle.r1, "r2": lambda _: self.oracle.r2,
                "drift": partial(feature_distances, paired=True)}

    def extra_summary(self, result: Mapping[str, Any]) -> dict[str, Any]:
        lam, bounds = result["lambda"], (float(self.lambda_box["low"]), float(self.lambda_box["high"]))
        star = self.oracle.lambda_star(*bounds)
        rel_sd = self.oracle.lambda_star_rel_sd(star, self.pool_samples)
        if rel_sd > 0.025 and bounds[0] < star < bounds[1]:
            log.warning("lambda* = %.4g is flat against Monte Carlo noise: %d pool samples locate it to +-%.0f%% "
                        "(1 sd); raise task.pool_samples for a tighter estimate", star, self.pool_samples,
                        100 * rel_sd)
        return {"lambda_star": star, "lambda_rel_error": abs(lam - star) / star, "lambda_star_rel_sd": rel_sd,
                "objective_exact": self.oracle.objective(lam), "objective_star": self.oracle.objective(star)}
