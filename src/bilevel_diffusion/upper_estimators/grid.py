"""``upper_estimator=grid``: exhaustive grid search (the paper's baseline: lambda in {0.01, 0.1, 1, 10, 100})."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import optuna

from bilevel_diffusion.upper_estimators.search import SearchEstimator, SearchSpace, grid_values


class PointSampler(optuna.samplers.BaseSampler):
    """Proposes one given point (the grid's next one)."""

    def __init__(self, point: Mapping[str, float]) -> None:
        self.point = dict(point)

    def infer_relative_search_space(self, study, trial) -> dict:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict:
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution) -> float:
        return self.point[param_name]


class GridSearch(SearchEstimator):
    """Every point of the grid ``values[param]`` (or ``num_points`` evenly spaced values of each range), in an
    order shuffled by ``seed`` (which matters when ``n_trials`` is below the grid size); trial i is point i."""

    def __init__(self, name: str = "grid", values: Mapping[str, Sequence[float]] | None = None, num_points: int = 5,
                 n_trials: int | None = None, timeout_s: float | None = None, seed: int = 0,
                 report_trials: bool = True) -> None:
        super().__init__(name, n_trials, timeout_s, seed, report_trials)
        self.values, self.num_points = dict(values or {}), int(num_points)

    def points(self, space: SearchSpace) -> list[dict[str, float]]:
        grid = grid_values(space, self.values, self.num_points)
        points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
        order = np.random.default_rng(self.seed).permutation(len(points))
        return [points[i] for i in order]

    def make_sampler(self, space: SearchSpace, finished_trials: int) -> optuna.samplers.BaseSampler:
        points = self.points(space)
        return PointSampler(points[min(finished_trials, len(points) - 1)])

    def max_trials(self, space: SearchSpace) -> int:
        size = len(self.points(space))
        return size if self.n_trials is None else min(size, int(self.n_trials))
