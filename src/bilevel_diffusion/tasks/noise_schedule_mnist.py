"""``task=noise_schedule_mnist``: Scenario B (paper Sec. 3.2, ``docs/method.md``), learn the noise schedule of an
MNIST diffusion model trained from scratch.

``upper_estimator`` chooses the method:

- ``zeroth_order``: the paper's penalty method (Alg. 6), one training run that moves the schedule as it goes;
- ``staged_grid`` / ``grid`` / ``random`` / ``bayesian``: search baselines, each trial a full training run under a
  fixed schedule from the same family and box (``schedule.bounds``), ranked by an FID on selection noise and
  reported on the evaluation noise (``problems/schedule.py``);
- ``fixed``: one training run under the configured schedule.

Every method is judged by the same *reported* FID/IS (``eval.num_samples`` DDIM samples from fixed noise). The run
also draws ``schedule.png``: the final schedule against the initial one and the standard cosine.
"""

from __future__ import annotations

from typing import Any

from bilevel_diffusion.reporting.figures import plot_schedules
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.schedules.family import CosineSchedule
from bilevel_diffusion.tasks.train_mnist import TrainMNIST
from bilevel_diffusion.upper_estimators.base import UpperEstimator
from bilevel_diffusion.upper_estimators.fixed import Fixed
from bilevel_diffusion.upper_estimators.search import SearchEstimator
from bilevel_diffusion.upper_estimators.zeroth_order import ZerothOrderEstimator


class NoiseScheduleMNIST(TrainMNIST):
    """``task=train_mnist`` with an upper level on the schedule."""

    accepts = (ZerothOrderEstimator, SearchEstimator, Fixed)

    def run(self, estimator: UpperEstimator, ctx: RunContext) -> dict[str, Any]:
        problem = self.problem(ctx)
        initial = problem.with_params(self.schedule.as_dict())
        result = estimator.solve(problem, ctx)
        final = problem.with_params({k: v for k, v in result["schedule"].items() if k != "name"})
        curves = {f"{estimator.name}: final": final, "initial": initial,
                  "standard cosine": CosineSchedule(start=0.0, end=1.0, tau=1.0, eps=0.008)}
        figure = plot_schedules(curves, ctx.run_dir / "schedule.png", title=f"{self.schedule.name}, {estimator.name}")
        ctx.recorder.log_file_image("schedule", figure)
        return {**result, "initial_schedule": initial.as_dict()}
