"""The optuna search baselines: budgets, the grid, the run log, and resume without lost or repeated trials."""

from __future__ import annotations

import math
import time

import pytest
import torch
from omegaconf import OmegaConf

from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.tracking.recorder import Recorder
from bilevel_diffusion.upper_estimators.bayesian import BayesianSearch
from bilevel_diffusion.upper_estimators.grid import GridSearch
from bilevel_diffusion.upper_estimators.random import RandomSearch
from conftest import read_jsonl

SPACE = {"lam": {"low": 0.01, "high": 100.0, "log": True}}


def make_ctx(run_dir, resume: bool = False) -> RunContext:
    return RunContext(run_dir=run_dir, cache_dir=run_dir, device=torch.device("cpu"), dtype=torch.float32, seed=0,
                      resume=resume, recorder=Recorder(run_dir, OmegaConf.create({}), resume=resume))


def bowl(params: dict[str, float]) -> dict:
    return {"objective": (math.log10(params["lam"]) - 0.3) ** 2, "sampler_nfe": 7}


def test_default_grid_over_a_log_range_is_the_papers_lambda_grid(tmp_path) -> None:
    result = GridSearch().search(SPACE, bowl, make_ctx(tmp_path))
    assert sorted(t.params["lam"] for t in result.trials) == pytest.approx([0.01, 0.1, 1.0, 10.0, 100.0])
    assert result.best_params["lam"] == pytest.approx(1.0) and result.sampler_nfe == 5 * 7
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4] and all({"lam", "objective", "trial"} <= set(r) for r in rows)


@pytest.mark.parametrize("estimator", [RandomSearch(n_trials=12), BayesianSearch(n_trials=12, n_startup_trials=4)],
                         ids=["random", "bayesian"])
def test_search_finds_the_minimum_of_a_bowl(tmp_path, estimator) -> None:
    result = estimator.search(SPACE, bowl, make_ctx(tmp_path))
    assert len(result.trials) == 12
    assert all(0.01 <= t.params["lam"] <= 100 for t in result.trials)
    assert abs(math.log10(result.best_params["lam"]) - 0.3) < 0.5
    assert result.best_value == min(t.objective for t in result.trials)


def test_wall_clock_budget_stops_the_search(tmp_path) -> None:
    slow = lambda p: (time.sleep(0.3), bowl(p))[1]  # noqa: E731
    result = RandomSearch(n_trials=100, timeout_s=1.0).search(SPACE, slow, make_ctx(tmp_path))
    assert 1 <= len(result.trials) <= 3  # the 4th would end past 1 s: not started


class Stop(Exception):
    pass


@pytest.mark.parametrize("make", [GridSearch, lambda: RandomSearch(n_trials=5)], ids=["grid", "random"])
def test_a_stopped_search_resumes_without_losing_or_repeating_trials(tmp_path, make) -> None:
    calls: list[float] = []

    def stopping(params):
        calls.append(params["lam"])
        if len(calls) == 3:
            raise Stop  # the job dies in the middle of the third evaluation
        return bowl(params)

    with pytest.raises(Stop):
        make().search(SPACE, stopping, make_ctx(tmp_path))
    resumed = make().search(SPACE, stopping, make_ctx(tmp_path, resume=True))
    evaluated = [t.params["lam"] for t in resumed.trials]
    assert len(evaluated) == 5 and len(set(evaluated)) == 5
    assert calls[3] == calls[2], "the interrupted trial is evaluated again first"
    assert len(calls) == 6, "finished trials are not evaluated again"
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3, 4]


def test_a_second_search_in_the_same_directory_needs_resume(tmp_path) -> None:
    GridSearch(n_trials=1).search(SPACE, bowl, make_ctx(tmp_path))
    with pytest.raises(ConfigError, match="resume=true"):
        GridSearch(n_trials=1).search(SPACE, bowl, make_ctx(tmp_path))


@pytest.mark.parametrize("space,values", [({"lam": {"low": 1.0, "high": 1.0}}, None),
                                          ({"lam": {"low": 0.0, "high": 1.0, "log": True}}, None),
                                          (SPACE, {"lam": [1000.0]}), (SPACE, {"other": [1.0]})])
def test_bad_spaces_are_config_errors(tmp_path, space, values) -> None:
    with pytest.raises(ConfigError):
        GridSearch(values=values).search(space, bowl, make_ctx(tmp_path))


def test_runs_with_different_seeds_draw_independent_trials() -> None:
    from bilevel_diffusion.upper_estimators.search import trial_seed

    run0 = [trial_seed(0, i) for i in range(50)]
    run1 = [trial_seed(1, i) for i in range(50)]
    assert not set(run0) & set(run1), "seed + index would give run 1's trial i the sampler of run 0's trial i + 1"
    assert run0 == [trial_seed(0, i) for i in range(50)], "deterministic, so a resumed search proposes the same"


def test_trial_measurements_never_select_and_their_time_is_not_the_searchs(tmp_path) -> None:
    """``report(params)`` (the evaluation-noise measurement) rates the points the other way round and is slow: the
    search still picks by the selection objective, optuna sees only it, and ``search_s`` leaves the measurement out."""
    def slow_report(params: dict[str, float]) -> dict:
        time.sleep(0.2)
        return {"objective": -bowl(params)["objective"], "extra": 1.0}

    result = BayesianSearch(n_trials=6, n_startup_trials=3).search(SPACE, bowl, make_ctx(tmp_path), slow_report)
    assert result.best_value == min(t.objective for t in result.trials)
    records = [t.objective < min([u.objective for u in result.trials[:t.index]], default=math.inf)
               for t in result.trials]  # the trials that became the answer so far: only those are measured
    assert records[0] and not all(records), "the check needs a trial that did not improve"
    for t, record in zip(result.trials, records):
        assert ("report_objective" in t.result) == record
        assert not record or (t.result["report_objective"] == -t.objective and t.result["report_extra"] == 1.0)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["search_cost"] for r in rows] == [7 * (i + 1) for i in range(6)]
    assert [r.get("report_s", 0) >= 0.2 for r in rows] == records
    assert rows[-1]["search_s"] < rows[-1]["wall_clock_s"] - sum(records) * 0.2 + 0.05
    again = BayesianSearch(n_trials=6, n_startup_trials=3).search(SPACE, bowl, make_ctx(tmp_path / "b"))
    assert [t.params for t in again.trials] == [t.params for t in result.trials]  # the measurements steer nothing
