"""``upper_estimator=bayesian``: Bayesian optimisation (optuna's GP sampler; TPE as an option).

The official code used a scikit-optimize GP with 20 calls over log-uniform lambda in [0.01, 100], of which the
first 10 are random; ``n_startup_trials`` plays that role here.
"""

from __future__ import annotations

import optuna

from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.upper_estimators.search import SearchEstimator, SearchSpace, trial_seed


class BayesianSearch(SearchEstimator):
    """``sampler=gp`` (optuna GPSampler) or ``sampler=tpe`` (TPESampler), after ``n_startup_trials`` random ones."""

    def __init__(self, name: str = "bayesian", sampler: str = "gp", n_trials: int = 20, n_startup_trials: int = 10,
                 timeout_s: float | None = None, seed: int = 0,
                 report_trials: bool = True) -> None:
        super().__init__(name, n_trials, timeout_s, seed, report_trials)
        if sampler not in ("gp", "tpe"):
            raise ConfigError(f"upper_estimator.sampler must be gp or tpe (got {sampler!r})")
        if n_startup_trials < 1:
            raise ConfigError(f"upper_estimator.n_startup_trials must be >= 1 (got {n_startup_trials})")
        self.sampler, self.n_startup_trials = sampler, int(n_startup_trials)

    def make_sampler(self, space: SearchSpace, finished_trials: int) -> optuna.samplers.BaseSampler:
        seed = trial_seed(self.seed, finished_trials)
        if self.sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=self.n_startup_trials,
                                             deterministic_objective=False)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials)
