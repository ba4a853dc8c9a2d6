"""The task layer's two shapes (``docs/design.md``).

A task (``configs/task/*.yaml``, one module under ``tasks/``) gets its components (data, model, schedule, solver,
rewards, evaluation settings) as constructor arguments, which Hydra instantiates from the config groups in one
place (:func:`bilevel_diffusion.main.run_job`). :meth:`Task.run` builds the task's problem, hands it to the upper
estimator's ``solve`` and adds the task's own summary keys. ``accepts`` lists the estimator classes (subclasses
included) that can solve the task's problem; :func:`check_pair` refuses any other pair before work starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.lower_solvers.guided_sampling import GuidedSampler
from bilevel_diffusion.problems.reward import RewardProblem
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.upper_estimators.base import UpperEstimator
from bilevel_diffusion.upper_estimators.bayesian import BayesianSearch
from bilevel_diffusion.upper_estimators.closed_form import ClosedFormEstimator
from bilevel_diffusion.upper_estimators.grid import GridSearch
from bilevel_diffusion.upper_estimators.sampler_difference import SamplerDifference
from bilevel_diffusion.upper_estimators.random import RandomSearch
from bilevel_diffusion.upper_estimators.weighted_sum import WeightedSum


class Task:
    """Base class of the tasks."""

    #: the upper estimator classes this task's problem can be solved by
    accepts: ClassVar[tuple[type[UpperEstimator], ...]] = ()
    #: the lower-level solver classes (``lower_solver`` options) the task can use
    solvers: ClassVar[tuple[type, ...]] = ()
    #: ``summary.json`` keys printed by name in the job's last console line
    headline: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, estimator: UpperEstimator, ctx: RunContext) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError


def check_pair(task_cls: type, component_cls: type, task: str, option: str,
               options: Callable[[], Mapping[str, type]], group: str = "upper_estimator") -> None:
    """Refuse ``task`` with the ``group`` option ``option`` unless the task takes its class (``accepts`` for
    ``upper_estimator``, ``solvers`` for ``lower_solver``); ``options()`` maps every option of the group to its
    class, for the message (read only when refusing)."""
    accepts = tuple(getattr(task_cls, "accepts" if group == "upper_estimator" else "solvers", ()))
    if issubclass(component_cls, accepts):
        return
    usable = sorted(name for name, cls in options().items() if issubclass(cls, accepts))
    raise ConfigError(f"task={task} does not take {group}={option}; choose one of: {', '.join(usable)}")


class RewardTask(Task):
    """Base class of the Scenario A tasks: the settings every reward task shares; subclasses give the pre-trained
    model and the rewards (:meth:`problem_parts`) and may add summary keys (:meth:`extra_summary`)."""

    #: lambda is one parameter: no staged grid
    accepts = (ClosedFormEstimator, SamplerDifference, GridSearch, RandomSearch, BayesianSearch, WeightedSum)
    solvers = (GuidedSampler,)
    headline = ("lambda", "r1", "r2", "fid_vs_pretrained")

    def __init__(self, name: str, lower_solver: GuidedSampler, evaluation: Mapping[str, Any], pool_samples: int = 512,
                 trial_samples: int = 256, lambda_box: Mapping[str, Any] | None = None, log_every: int = 1,
                 checkpoint_every: int = 10) -> None:
        if min(pool_samples, trial_samples) < 2 or log_every < 1 or checkpoint_every < 0:
            raise ConfigError(f"task needs pool_samples >= 2, trial_samples >= 2, log_every >= 1, "
                              f"checkpoint_every >= 0 (got {pool_samples}, {trial_samples}, {log_every}, "
                              f"{checkpoint_every})")
        super().__init__(name)
        self.sampler, self.evaluation = lower_solver, evaluation
        self.pool_samples, self.trial_samples = int(pool_samples), int(trial_samples)
        self.lambda_box = dict(lambda_box or {"low": 0.01, "high": 100.0, "log": True})
        self.log_every, self.checkpoint_every = int(log_every), int(checkpoint_every)

    def problem_parts(self, ctx: RunContext) -> dict[str, Any]:  # pragma: no cover - abstract
        """The model side of :class:`RewardProblem`: eps_fn, betas, sample_shape, prompts, r1, r2, drift, ..."""
        raise NotImplementedError

    def extra_summary(self, result: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def run(self, estimator: UpperEstimator, ctx: RunContext) -> dict[str, Any]:
        estimator.check_space({"lambda": self.lambda_box})  # before the model, rewards and pools are built
        problem = RewardProblem(name=self.name, sampler=self.sampler, ctx=ctx, evaluation=self.evaluation,
                                pool_samples=self.pool_samples, trial_samples=self.trial_samples,
                                lambda_space=self.lambda_box, log_every=self.log_every,
                                checkpoint_every=self.checkpoint_every, **self.problem_parts(ctx))
        result = estimator.solve(problem, ctx)
        return {**result, "reference_nfe": problem.reference_nfe, **self.extra_summary(result)}
