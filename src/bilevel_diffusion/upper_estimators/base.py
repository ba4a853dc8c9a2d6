"""The one shape of every upper estimator (``configs/upper_estimator/*.yaml``): ``solve(problem, ctx) -> result``.

A task builds a *problem* (:class:`~bilevel_diffusion.problems.reward.RewardProblem` for Scenario A,
:class:`~bilevel_diffusion.problems.schedule.ScheduleProblem` for Scenario B) and hands it to the estimator the
user chose; the estimator runs its whole algorithm on it and returns the task-independent part of ``summary.json``
(``objective``, ``sampler_nfe`` and the keys of its problem's report). Which estimators a task accepts is declared
by the task (``Task.accepts``) and checked before any work. See ``docs/design.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from bilevel_diffusion.runtime import RunContext


class UpperEstimator:
    """Base class: ``name`` is the config option's name (``summary.json``'s ``method``); ``problem_type`` is the
    problem class (or classes) :meth:`solve` works on."""

    problem_type: ClassVar[type | tuple[type, ...]] = object

    def __init__(self, name: str) -> None:
        self.name = name

    def solve(self, problem: Any, ctx: RunContext) -> dict[str, Any]:  # pragma: no cover - abstract
        """Run the method on ``problem``; returns the result keys of ``summary.json``."""
        raise NotImplementedError

    def check_space(self, space: Mapping[str, Mapping[str, Any]]) -> None:
        """Called by the task with the space of hyper-parameters its problem will have, before any work: settings of
        the estimator that must lie in it are checked here (``ConfigError``)."""

    def check_problem(self, problem: Any) -> None:
        """A problem this estimator cannot solve is a programming error of the task (tasks declare ``accepts``)."""
        if not isinstance(problem, self.problem_type):
            raise TypeError(f"upper_estimator={self.name} solves {self.problem_type}, got {type(problem).__name__}")
