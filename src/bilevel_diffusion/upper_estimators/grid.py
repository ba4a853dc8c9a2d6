"""``upper_estimator=grid``: exhaustive grid search (the paper's baseline: lambda in {0.01, 0.1, 1, 10, 100})."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import optuna

from bilevel_diffusion.upper_estimators.search import SearchEstimator, SearchSpace, grid_values


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler whose ``after_trial`` does not call ``study.stop()`` (only legal inside ``study.optimize``);
    the ask/tell loop of :class:`SearchEstimator` checks ``is_exhausted`` itself."""

    def after_trial(self, study, trial, state, values) -> None:  # noqa: D102
        return None


class GridSearch(SearchEstimator):
    """optuna's GridSampler over ``values[param]`` (or ``num_points`` evenly spaced values of its range)."""

    def __init__(self, name: str = "grid", values: Mapping[str, Sequence[float]] | None = None, num_points: int = 5,
                 n_trials: int | None = None, timeout_s: float | None = None, seed: int = 0) -> None:
        super().__init__(name, n_trials, timeout_s, seed)
        self.values, self.num_points = dict(values or {}), int(num_points)

    def make_sampler(self, space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
        return _AskTellGridSampler(grid_values(space, self.values, self.num_points), seed=seed)

    def sampler_seed(self, previous_trials: int) -> int:
        """The same seed on resume: GridSampler maps trial numbers to grid points through a seeded shuffle."""
        return self.seed

    def max_trials(self, space: SearchSpace) -> int:
        size = math.prod(len(v) for v in grid_values(space, self.values, self.num_points).values())
        return size if self.n_trials is None else min(size, int(self.n_trials))
