"""``upper_estimator=sampler_difference``: the lambda loop of Scenario A with the guided sampler's own derivative.

Not the paper's estimator (that is ``closed_form``, Alg. 2 / Eq. 13). Eq. 13's ``Cov(r1, r2)/lambda^2`` is the
derivative of ``F`` under the *tilted* distribution ``p_pre exp(r2/lambda)``; the guided sampler (Alg. 5) only
approximates that tilt away from the Gaussian case, and on ``finetune_mnist`` the covariance keeps saying "decrease
lambda" below the peak of r1 of the sampler's actual output (docs/results.md). This estimator differentiates what
the sampler produces: with ``F(lambda) = -mean r1`` of the guided samples on the trial noise (the noise the searches
rank on; common to every evaluation, so differences are not drowned by sampling noise),

    dF/dlog(lambda) ~ [F(lambda e^h) - F(lambda e^-h)] / (2 h),

two guided sampling calls per step, then a projected Adam step on ``log(lambda)`` in the task's lambda box
(docs/method.md, Scenario A, the sampler's own derivative).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from tqdm.auto import tqdm

from bilevel_diffusion import stopping
from bilevel_diffusion.checkpoint import load_loop, save_checkpoint
from bilevel_diffusion.errors import ConfigError, NumericalFault
from bilevel_diffusion.problems.reward import RewardProblem, check_in_lambda_box
from bilevel_diffusion.reporting.reward_figures import plot_lambda_trace
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.upper_estimators.base import UpperEstimator


class SamplerDifference(UpperEstimator):
    """Adam on ``log(lambda)`` with the central difference of the guided samples' r1 (step ``h`` in log lambda)."""

    problem_type = RewardProblem

    def __init__(self, name: str = "sampler_difference", lambda_init: float = 5.0, num_steps: int = 30,
                 lr: float = 0.3, h: float = 0.2, final_lr_fraction: float = 0.05) -> None:
        if not lambda_init > 0 or num_steps < 1 or lr <= 0 or h <= 0 or not 0 < final_lr_fraction <= 1:
            raise ConfigError("upper_estimator=sampler_difference needs lambda_init > 0, num_steps >= 1, lr > 0, "
                              f"h > 0 and 0 < final_lr_fraction <= 1 (got {lambda_init}, {num_steps}, {lr}, {h}, "
                              f"{final_lr_fraction})")
        super().__init__(name)
        self.lambda_init, self.num_steps, self.lr, self.h = float(lambda_init), int(num_steps), float(lr), float(h)
        self.final_lr_fraction = float(final_lr_fraction)

    def check_space(self, space: Mapping[str, Mapping[str, Any]]) -> None:
        """``lambda_init`` must lie in the task's lambda box."""
        check_in_lambda_box(space, self.lambda_init, "upper_estimator.lambda_init")

    def solve(self, problem: RewardProblem, ctx: RunContext) -> dict[str, Any]:
        """The lambda loop on ``problem``'s trial noise, then its reported evaluation (evaluation noise)."""
        self.check_problem(problem)
        self.check_space(problem.search_space())
        low, high = math.log(problem.lambda_space["low"]), math.log(problem.lambda_space["high"])
        theta = torch.tensor(math.log(self.lambda_init), dtype=torch.float64, requires_grad=True)
        # little momentum: on a smooth 1-d objective it only overshoots the optimum; a short second-moment memory as
        # closed_form (the gradient scale changes along the path)
        optim = torch.optim.Adam([theta], lr=self.lr, betas=(0.5, 0.9))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=self.num_steps,
                                                              eta_min=self.lr * self.final_lr_fraction)
        start, lambdas, nfe, cost = 0, [], 0, 0
        if ctx.resume and ctx.checkpoint_path.exists():
            state = load_loop(ctx.checkpoint_path, theta, optim, schedule)
            start, lambdas, nfe, cost = state["step"], state["lambdas"], state["nfe"], state["cost"]
            ctx.recorder.restore(state, start - 1)
        bar = tqdm(range(start, self.num_steps), initial=start, total=self.num_steps,
                   desc="lambda (sampler difference)", disable=None)
        for step in bar:
            lam = float(theta.detach().exp())
            bar.set_postfix(lam=f"{lam:.4g}")
            up, down = (problem.evaluate(lam * math.exp(sign * self.h), "trial") for sign in (1, -1))
            grad = (up["objective"] - down["objective"]) / (2 * self.h)
            if not math.isfinite(grad):
                raise NumericalFault(f"non-finite r1 difference at lambda step {step} (lambda={lam:.4g})")
            nfe += up["sampler_nfe"] + down["sampler_nfe"]
            cost += up["sampler_cost"] + down["sampler_cost"]
            theta.grad = torch.tensor(grad, dtype=torch.float64)
            optim.step()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
                schedule.step()
            with torch.no_grad():
                theta.clamp_(low, high)
            lambdas.append(lam)
            ctx.recorder.log(step, **{"lambda": lam, "hypergrad": grad / lam, "objective_trial":
                                      (up["objective"] + down["objective"]) / 2})
            stop = stopping.requested()
            if (problem.checkpoint_every and (step + 1) % problem.checkpoint_every == 0) or stop \
                    or step + 1 == self.num_steps:
                save_checkpoint({"theta": theta.detach(), "optim": optim.state_dict(),
                                 "schedule": schedule.state_dict(), "step": step + 1, "lambdas": lambdas, "nfe": nfe,
                                 "cost": cost, **ctx.recorder.checkpoint_fields()}, ctx.checkpoint_path)
            if stop:
                stopping.raise_if_requested(f"after lambda step {step + 1} (checkpoint saved)")
        problem.figure("lambda_trace", plot_lambda_trace(lambdas, ctx.run_dir / "lambda_trace.png", problem.name))
        lam = float(theta.detach().exp())
        return {**problem.report(lam, nfe, len(lambdas), method_cost=cost), "bilevel_steps": len(lambdas)}
