"""Hyper-parameter search baselines (``docs/method.md``, Baselines): grid, random and Bayesian search over optuna 5.

:meth:`SearchEstimator.solve` takes any problem with a search interface (both Scenario A and B problems have it)::

    space = problem.search_space()        # {"lambda": {"low": 0.01, "high": 100.0, "log": True}}, one entry per param
    problem.trial(params) -> dict         # one full evaluation (a guided sampling run, a training run, ...):
                                          # {"objective": ..., "sampler_nfe": ..., **other_scalars}, lower is better
    problem.report_search(found) -> dict  # the reported result of the search (summary.json keys)
    problem.report_trial(params) -> dict  # the trial just evaluated, on the evaluation noise ({"objective": ...})

and runs ``found = self.search(space, problem.trial, ctx, problem.report_trial)`` in between.

``result.best_params``, ``result.best_value``, ``result.best_result`` (the dict ``evaluate`` returned for the best
trial), ``result.trials`` (every evaluated trial, in order) and ``result.sampler_nfe`` (summed over trials).

- Ask/tell with an optuna SQLite study at ``ctx.run_dir / "study.db"``. With ``resume=true`` the study is loaded:
  finished trials are kept (never re-evaluated), a trial that was running when the job stopped is marked failed and
  its parameters are queued again, so nothing is lost or repeated. Trial i is proposed by a sampler seeded with
  :func:`trial_seed` ``(seed, i)`` (independent streams for different run seeds, unlike ``seed + i``), so a resumed
  search proposes what an uninterrupted one would (the grid walks a seeded order of its points).
- Budget: ``n_trials`` evaluations and/or ``timeout_s`` seconds of this job's wall clock (both counted across
  resumes); no trial starts that the mean trial time so far says would end past ``timeout_s`` (the first always
  runs); the grid stops when it is exhausted.
- Each evaluated trial is one ``metrics.jsonl`` line at ``step`` = its index: ``trial``, the parameters and the
  scalar entries of its result dict (only those scalars are kept in the study, so ``result.trials`` restored after
  a resume hold the scalars). On resume the search calls ``ctx.recorder.resume_from`` itself: log lines of a task
  at steps >= the number of finished trials are dropped, so log the task's own lines after the search at steps
  ``>= len(result.trials)``.
- A non-finite objective is told to optuna as a failed trial (the record is kept and logged).
- Anytime measurement (``report_trials``, default on; docs/results.md, derived views): after each trial that
  becomes the search's answer so far (a finite objective below every earlier one) its point is also evaluated on the
  evaluation noise (``report_objective`` and the other ``report_*`` keys of the trial's line); the answer after any
  other trial is an earlier, already measured one, so measuring it too would change no curve. Those values never
  reach the sampler or the choice of the best trial; their time (``report_s``) is left out of the search's own
  compute: ``search_s`` is the search's cumulative wall clock without the measurements, ``search_cost`` its
  cumulative ``sampler_cost``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import TrialState
from tqdm.auto import tqdm

from bilevel_diffusion import distributed, stopping
from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.problems.reward import RewardProblem
from bilevel_diffusion.problems.schedule import ScheduleProblem
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.upper_estimators.base import UpperEstimator

#: ``{param: {"low": float, "high": float, "log": bool}}``
SearchSpace = Mapping[str, Mapping[str, Any]]
Evaluate = Callable[[dict[str, float]], dict[str, Any]]

STUDY_FILE = "study.db"
STUDY_NAME = "search"
_RESULT_ATTR = "result"
_WALL_ATTR = "wall_clock_s"


@dataclass
class TrialRecord:
    """One evaluated point: its parameters and the dict ``evaluate`` returned."""

    index: int
    params: dict[str, float]
    result: dict[str, Any]

    @property
    def objective(self) -> float:
        return float(self.result["objective"])


@dataclass
class SearchResult:
    best_params: dict[str, float]
    best_value: float
    best_result: dict[str, Any]
    trials: list[TrialRecord] = field(default_factory=list)

    @property
    def sampler_nfe(self) -> int:
        return int(sum(int(t.result["sampler_nfe"]) for t in self.trials))


def trial_seed(seed: int, index: int) -> int:
    """The seed of trial ``index``'s sampler in a run with ``seed``: a SeedSequence of both, so runs with different
    seeds draw independent trials (``seed + index`` would make run 1's trial i run 0's trial i + 1)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def check_space(space: SearchSpace) -> None:
    """Every parameter needs ``low < high`` (and ``low > 0`` on a log scale)."""
    if not space:
        raise ConfigError("the search space is empty")
    for name, box in space.items():
        low, high, log = float(box["low"]), float(box["high"]), bool(box.get("log", False))
        if not low < high or (log and low <= 0):
            raise ConfigError(f"search range for {name!r} must have low < high (and low > 0 when log=true); "
                              f"got low={low}, high={high}, log={log}")


def _scalars(result: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool)) or v is None}


class SearchEstimator(UpperEstimator):
    """Base class of the search baselines: subclasses choose the optuna sampler."""

    problem_type = (RewardProblem, ScheduleProblem)

    def __init__(self, name: str, n_trials: int | None = None, timeout_s: float | None = None, seed: int = 0,
                 report_trials: bool = True) -> None:
        if n_trials is not None and n_trials < 1:
            raise ConfigError(f"upper_estimator.n_trials must be >= 1 (got {n_trials})")
        if timeout_s is not None and timeout_s <= 0:
            raise ConfigError(f"upper_estimator.timeout_s must be > 0 (got {timeout_s})")
        super().__init__(name)
        self.n_trials, self.timeout_s, self.seed = n_trials, timeout_s, int(seed)
        self.report_trials = bool(report_trials)

    def check_space(self, space: SearchSpace) -> None:
        check_space(space)

    def solve(self, problem: RewardProblem | ScheduleProblem, ctx: RunContext) -> dict[str, Any]:
        """Search the problem's space with its trial evaluation; the problem reports the chosen point."""
        self.check_problem(problem)
        report = problem.report_trial if self.report_trials else None
        return problem.report_search(self.search(problem.search_space(), problem.trial, ctx, report))

    def make_sampler(self, space: SearchSpace, finished_trials: int) -> optuna.samplers.BaseSampler:
        """The sampler that proposes the trial after ``finished_trials`` finished ones. A sampler per trial, whose
        randomness depends only on ``seed`` and that position, so a search stopped and resumed proposes the same
        points as one never stopped."""
        raise NotImplementedError  # pragma: no cover

    def max_trials(self, space: SearchSpace) -> int:
        """The trial budget (subclasses may cap it, e.g. by the grid size)."""
        if self.n_trials is None:
            raise ConfigError(f"upper_estimator={self.name} needs n_trials")
        return int(self.n_trials)

    def search(self, space: SearchSpace, evaluate: Evaluate, ctx: RunContext,
               report: Evaluate | None = None) -> SearchResult:
        """Minimise ``evaluate(params)["objective"]`` over ``space`` within the budget; ``report(params)`` (when
        given) measures each trial that becomes the answer so far on the evaluation noise after it ran, for the
        anytime curves only.

        With ``hardware=ddp`` rank 0 owns the study and sends each trial's parameters to the other ranks, which
        evaluate them with it (data-parallel) and receive the result at the end.
        """
        check_space(space)
        if not distributed.is_main():
            while (params := distributed.broadcast(None)) is not None:
                evaluate(params)
                if report is not None and distributed.broadcast(None):  # rank 0 says whether it is measured
                    report(params)
                stopping.raise_if_requested("after a search trial")  # a collective: rank 0 asks it after each trial
            return distributed.broadcast(None)
        result = self._lead(space, evaluate, ctx, report)
        distributed.broadcast(None)
        return distributed.broadcast(result)

    def _lead(self, space: SearchSpace, evaluate: Evaluate, ctx: RunContext,
              report: Evaluate | None) -> SearchResult:
        """The optuna ask/tell loop (rank 0)."""
        budget = self.max_trials(space)
        storage = f"sqlite:///{(ctx.run_dir / STUDY_FILE).resolve()}"
        try:
            study = optuna.load_study(study_name=STUDY_NAME, storage=storage) if ctx.resume else None
        except KeyError:  # resume=true but the job stopped before the study was created
            study = None
        if study is None:
            try:
                study = optuna.create_study(study_name=STUDY_NAME, storage=storage,
                                            sampler=self.make_sampler(space, 0),
                                            direction="minimize")
            except optuna.exceptions.DuplicatedStudyError as err:
                raise ConfigError(f"{ctx.run_dir / STUDY_FILE} already holds a search; pass resume=true to "
                                  f"continue it or choose another hydra.run.dir") from err
        trials = self._restore(study, ctx, list(space))
        start_wall = float(study.user_attrs.get("search_start_wall_clock_s", ctx.recorder.wall_clock()))
        study.set_user_attr("search_start_wall_clock_s", start_wall)
        distributions = {name: optuna.distributions.FloatDistribution(float(box["low"]), float(box["high"]),
                                                                      log=bool(box.get("log", False)))
                         for name, box in space.items()}
        bar = tqdm(total=budget, initial=len(trials), desc=f"{self.name} search trials", disable=None)
        mark = ctx.recorder.wall_clock()  # the search's own compute runs from here (without measurements)
        search_s = float(trials[-1].result.get("search_s", 0.0)) if trials else mark - start_wall
        search_cost = int(trials[-1].result.get("search_cost", 0)) if trials else 0
        best_so_far = min((t.objective for t in trials if math.isfinite(t.objective)), default=math.inf)
        while len(trials) < budget and not self._out_of_time(ctx, start_wall, len(trials)):
            study.sampler = self.make_sampler(space, len(trials))
            with torch.random.fork_rng(devices=[]):  # GPSampler's optimiser draws from torch's global generator
                torch.manual_seed(trial_seed(self.seed, len(trials)))
                trial = study.ask(distributions)
            params = distributed.broadcast({name: float(value) for name, value in trial.params.items()})
            result = dict(evaluate(params))
            if "objective" not in result or "sampler_nfe" not in result:
                raise KeyError("evaluate(params) must return at least 'objective' and 'sampler_nfe'")
            now = ctx.recorder.wall_clock()
            search_s, mark = search_s + now - mark, now
            search_cost += int(result.get("sampler_cost", result["sampler_nfe"]))
            result.update(search_s=search_s, search_cost=search_cost)
            objective = float(result["objective"])
            answer = math.isfinite(objective) and objective < best_so_far
            best_so_far = objective if answer else best_so_far
            if report is not None and distributed.broadcast(answer):
                measured = report(params)
                mark = ctx.recorder.wall_clock()
                result.update({f"report_{k}": v for k, v in _scalars(measured).items()}, report_s=mark - now)
            record = TrialRecord(len(trials), params, result)
            trials.append(record)
            # the line first: a stop between the two leaves the trial unfinished, so it runs again and the
            # resume (which keeps the lines of finished trials) drops its line
            ctx.recorder.log(record.index, **{"trial": record.index, **params, **_scalars(result)})
            trial.set_user_attr(_RESULT_ATTR, _scalars(result))
            value = record.objective
            study.tell(trial, value if math.isfinite(value) else None,
                       state=TrialState.COMPLETE if math.isfinite(value) else TrialState.FAIL)
            study.set_user_attr(_WALL_ATTR, ctx.recorder.wall_clock())
            stopping.raise_if_requested(f"after search trial {record.index} (the study is saved)")
            bar.update(1)
            bar.set_postfix(objective=f"{value:.4g}")
        bar.close()
        if not trials:
            raise ConfigError(f"upper_estimator={self.name}: the budget allowed no trial")
        best = min(trials, key=lambda t: t.objective if math.isfinite(t.objective) else math.inf)
        return SearchResult(best.params, best.objective, best.result, trials)

    def _out_of_time(self, ctx: RunContext, start_wall: float, done: int) -> bool:
        """The next trial would end past ``timeout_s`` (by the mean time of the ``done`` trials so far): a search
        never starts a trial it is not expected to finish within its budget, so equal budgets mean equal compute."""
        if self.timeout_s is None:
            return False
        elapsed = ctx.recorder.wall_clock() - start_wall
        return elapsed + (elapsed / done if done else 0.0) > self.timeout_s

    @staticmethod
    def _restore(study: optuna.Study, ctx: RunContext, names: Sequence[str]) -> list[TrialRecord]:
        """Trials evaluated before a stop (in order); a trial cut off mid-evaluation is failed and queued again
        (unless the stop came before all its parameters were stored: then the sampler proposes it afresh), and one
        cut off after its result was stored but before it was told is told now (samplers see what they would have)."""
        done: list[TrialRecord] = []
        for frozen in study.get_trials(deepcopy=False):
            if _RESULT_ATTR in frozen.user_attrs:
                record = TrialRecord(len(done), dict(frozen.params), dict(frozen.user_attrs[_RESULT_ATTR]))
                done.append(record)
                if frozen.state == TrialState.RUNNING:
                    finite = math.isfinite(record.objective)
                    study.tell(frozen.number, record.objective if finite else None,
                               state=TrialState.COMPLETE if finite else TrialState.FAIL)
            elif frozen.state == TrialState.RUNNING:
                study.tell(frozen.number, state=TrialState.FAIL)
                if set(names) <= set(frozen.params):
                    study.enqueue_trial(dict(frozen.params))
        if done or study.user_attrs.get(_WALL_ATTR) is not None:
            ctx.recorder.resume_from(len(done) - 1, float(study.user_attrs.get(_WALL_ATTR, 0.0)))
        return done


def axis_values(box: Mapping[str, Any], num_points: int) -> list[float]:
    """``num_points`` evenly spaced values over ``[low, high]`` (geometrically when ``log``)."""
    low, high = float(box["low"]), float(box["high"])
    if num_points == 1:
        return [math.sqrt(low * high) if box.get("log", False) else (low + high) / 2]
    grid = np.geomspace(low, high, num_points) if box.get("log", False) else np.linspace(low, high, num_points)
    return [float(v) for v in grid]


def grid_values(space: SearchSpace, values: Mapping[str, Sequence[float]] | None,
                num_points: int) -> dict[str, list[float]]:
    """The grid per parameter: ``values[name]`` when given, else :func:`axis_values` of its range."""
    values = values or {}
    unknown = set(values) - set(space)
    if unknown:
        raise ConfigError(f"upper_estimator.values names parameters {sorted(unknown)} that are not searched "
                          f"(searched: {sorted(space)})")
    grid = {name: [float(v) for v in values[name]] if name in values else axis_values(box, num_points)
            for name, box in space.items()}
    for name, points in grid.items():
        low, high = float(space[name]["low"]), float(space[name]["high"])
        if not points or not all(low <= v <= high for v in points):
            raise ConfigError(f"grid values for {name!r} must be non-empty and inside [{low}, {high}] (got {points})")
    return grid
