"""``upper_estimator=random``: random search (uniform, or log-uniform for ``log`` parameters)."""

from __future__ import annotations

import optuna

from bilevel_diffusion.upper_estimators.search import SearchEstimator, SearchSpace, trial_seed


class RandomSearch(SearchEstimator):
    """optuna's RandomSampler for ``n_trials`` trials."""

    def __init__(self, name: str = "random", n_trials: int = 5, timeout_s: float | None = None, seed: int = 0,
                 report_trials: bool = True) -> None:
        super().__init__(name, n_trials, timeout_s, seed, report_trials)

    def make_sampler(self, space: SearchSpace, finished_trials: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=trial_seed(self.seed, finished_trials))
