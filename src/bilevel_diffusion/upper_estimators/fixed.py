"""``upper_estimator=fixed``: no upper level. The schedule stays as configured; one training (paper Alg. 3) and
its reported FID/IS. The fixed-schedule baseline of Scenario B and the whole of ``task=train_mnist``."""

from __future__ import annotations

from typing import Any

from bilevel_diffusion.problems.schedule import ScheduleProblem
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.upper_estimators.base import UpperEstimator


class Fixed(UpperEstimator):
    """Train once under ``problem.schedule`` (checkpointed, resumable), then report."""

    problem_type = ScheduleProblem

    def __init__(self, name: str = "fixed") -> None:
        super().__init__(name)

    def solve(self, problem: ScheduleProblem, ctx: RunContext) -> dict[str, Any]:
        self.check_problem(problem)
        solver = problem.train(problem.schedule, checkpointed=True)
        result = problem.report(solver.ema_model(), problem.schedule, solver.num_steps)
        return {**result, "trainings_used": 1, "train_steps": solver.num_steps,
                "num_parameters": sum(p.numel() for p in solver.model.parameters())}
