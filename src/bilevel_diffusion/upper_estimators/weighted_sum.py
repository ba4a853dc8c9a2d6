"""``upper_estimator=weighted_sum``: the scalarisation baseline (paper Table 1): no upper level, guide once with
``r2 + weight * r1`` at a fixed KL strength ``lambda``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.problems.reward import RewardProblem, check_in_lambda_box
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.upper_estimators.base import UpperEstimator


class WeightedSum(UpperEstimator):
    """Guidance reward ``r2 + weight * r1`` at strength ``1/lam`` (the official scripts used lambda = 1)."""

    problem_type = RewardProblem

    def __init__(self, name: str = "weighted_sum", weight: float = 1.0, lam: float = 1.0) -> None:
        if lam <= 0 or weight < 0:
            raise ConfigError(f"upper_estimator=weighted_sum needs lam > 0 and weight >= 0 (got {lam}, {weight})")
        super().__init__(name)
        self.weight, self.lam = float(weight), float(lam)

    def check_space(self, space: Mapping[str, Mapping[str, Any]]) -> None:
        """``lam`` must lie in the task's lambda box."""
        check_in_lambda_box(space, self.lam, "upper_estimator.lam")

    def solve(self, problem: RewardProblem, ctx: RunContext) -> dict[str, Any]:
        """The reported evaluation at ``lam``, guided by the weighted reward."""
        self.check_problem(problem)
        return problem.report(self.lam, 0, 0, reward=problem.weighted_reward(self.weight))
