"""Your own upper estimator: optuna's TPE sampler as one more search baseline. Deriving from a search that the tasks
already take (``RandomSearch``) keeps their ``accepts`` check, the study, resume and logging.

    python run.py task=finetune_mnist upper_estimator=random upper_estimator._target_=examples.tpe_search.TPESearch \
        upper_estimator.name=tpe upper_estimator.n_trials=8
"""

from __future__ import annotations

import optuna

from bilevel_diffusion.upper_estimators.random import RandomSearch
from bilevel_diffusion.upper_estimators.search import SearchSpace


class TPESearch(RandomSearch):
    """Tree-structured Parzen estimator (Bergstra et al. 2011): 3 random trials, then TPE proposals."""

    def make_sampler(self, space: SearchSpace, finished_trials: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=self.seed + finished_trials, n_startup_trials=3)
