"""``upper_estimator=staged_grid``: coordinate-wise grid search, one parameter at a time in a given order.

The official Scenario B README tunes the schedule by hand "tau first, then start, end, epsilon": each stage walks
one parameter over its grid with the others held at the best point found so far (at their initial values before
their own stage). A stage skips the value its anchor already has, so no point is evaluated twice.

The plan is replayed from the evaluated trials of the study on every ask, so it survives a stop and resume like
every other search (:class:`SearchEstimator`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.upper_estimators.search import _RESULT_ATTR, SearchEstimator, SearchSpace, grid_values


def _initial(box: Mapping[str, Any]) -> float:
    """A parameter's value before its stage: ``box["initial"]`` (given by the task) or the middle of its range."""
    return float(box.get("initial", (float(box["low"]) + float(box["high"])) / 2))


class StagedGridSampler(optuna.samplers.BaseSampler):
    """Proposes the next point of the staged grid from the study's evaluated trials (in trial order)."""

    def __init__(self, grid: Mapping[str, Sequence[float]], order: Sequence[str], initial: Mapping[str, float]):
        self.grid, self.order, self.initial = grid, list(order), dict(initial)

    def stage_values(self, stage: int) -> list[float]:
        """The values stage ``stage`` evaluates: its grid less the value of its (already evaluated) anchor."""
        name = self.order[stage]
        return [v for v in self.grid[name] if stage == 0 or v != self.initial[name]]

    def size(self) -> int:
        return sum(len(self.stage_values(s)) for s in range(len(self.order)))

    def next_point(self, evaluated: Sequence[tuple[dict[str, float], float]]) -> dict[str, float] | None:
        """The point after the evaluated ``(params, objective)`` pairs, or None when the plan is done."""
        anchor, best, i = dict(self.initial), (math.inf, dict(self.initial)), 0
        for stage, name in enumerate(self.order):
            for value in self.stage_values(stage):
                if i == len(evaluated):
                    return {**anchor, name: value}
                params, objective = evaluated[i]
                if objective < best[0]:
                    best = (objective, dict(params))
                i += 1
            anchor = dict(best[1])
        return None

    def _point(self, study: optuna.Study) -> dict[str, float]:
        evaluated = [(dict(t.params), t.value if t.state == TrialState.COMPLETE else math.inf)
                     for t in study.get_trials(deepcopy=False) if _RESULT_ATTR in t.user_attrs]
        point = self.next_point(evaluated)
        if point is None:
            raise RuntimeError("the staged grid is exhausted; SearchEstimator caps the trials at its size")
        return point

    def infer_relative_search_space(self, study, trial) -> dict:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict:
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution) -> float:
        return self._point(study)[param_name]


class StagedGridSearch(SearchEstimator):
    """Grid search one parameter at a time in ``order`` (the rest of the space stays at its initial values)."""

    def __init__(self, name: str = "staged_grid", order: Sequence[str] = (),
                 values: Mapping[str, Sequence[float]] | None = None, num_points: int = 5,
                 n_trials: int | None = None, timeout_s: float | None = None, seed: int = 0,
                 report_trials: bool = True) -> None:
        super().__init__(name, n_trials, timeout_s, seed, report_trials)
        self.order, self.values, self.num_points = list(order), dict(values or {}), int(num_points)

    def _sampler(self, space: SearchSpace) -> StagedGridSampler:
        unknown = [name for name in self.order if name not in space]
        if not self.order or unknown or len(set(self.order)) != len(self.order):
            raise ConfigError(f"upper_estimator.order must list searched parameters once each "
                              f"(searched: {sorted(space)}, got {self.order})")
        grid = grid_values(space, self.values, self.num_points)
        return StagedGridSampler(grid, self.order, {name: _initial(box) for name, box in space.items()})

    def make_sampler(self, space: SearchSpace, finished_trials: int) -> optuna.samplers.BaseSampler:
        return self._sampler(space)

    def max_trials(self, space: SearchSpace) -> int:
        size = self._sampler(space).size()
        return size if self.n_trials is None else min(size, int(self.n_trials))
