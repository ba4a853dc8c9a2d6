"""``upper_estimator=staged_grid``: tau first, then start, end, eps; no point twice; resume after a stop."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.tracking.recorder import Recorder
from bilevel_diffusion.upper_estimators.staged_grid import StagedGridSearch

SPACE = {"start": {"low": 0.0, "high": 0.4, "initial": 0.0}, "end": {"low": 0.8, "high": 1.0, "initial": 1.0},
         "tau": {"low": 1.0, "high": 4.0, "initial": 1.0}}
VALUES = {"tau": [1.0, 2.0, 3.0], "start": [0.0, 0.2], "end": [0.9, 1.0]}
BEST = {"tau": 2.0, "start": 0.2, "end": 0.9}


def make_ctx(run_dir, resume: bool = False) -> RunContext:
    return RunContext(run_dir=run_dir, cache_dir=run_dir, device=torch.device("cpu"), dtype=torch.float32, seed=0,
                      resume=resume, recorder=Recorder(run_dir, OmegaConf.create({})))


def bowl(params: dict[str, float]) -> dict:
    return {"objective": sum((params[k] - v) ** 2 for k, v in BEST.items()), "sampler_nfe": 1}


def search(ctx, evaluate=bowl):
    return StagedGridSearch(order=["tau", "start", "end"], values=VALUES).search(SPACE, evaluate, ctx)


def test_stages_walk_one_parameter_at_a_time_from_the_best_point_so_far(tmp_path) -> None:
    result = search(make_ctx(tmp_path))
    points = [(t.params["tau"], t.params["start"], t.params["end"]) for t in result.trials]
    assert points == [(1.0, 0.0, 1.0), (2.0, 0.0, 1.0), (3.0, 0.0, 1.0),  # tau, the rest at their initial values
                      (2.0, 0.2, 1.0),                                    # start at the best tau (0.0 was seen)
                      (2.0, 0.2, 0.9)]                                    # end at the best (tau, start)
    assert result.best_params == BEST and len(set(points)) == len(points)


def test_a_stopped_staged_grid_resumes_without_losing_or_repeating_points(tmp_path) -> None:
    calls: list[dict] = []

    def stopping(params):
        calls.append(params)
        if len(calls) == 4:
            raise RuntimeError("killed")
        return bowl(params)

    with pytest.raises(RuntimeError):
        search(make_ctx(tmp_path), stopping)
    resumed = search(make_ctx(tmp_path, resume=True), stopping)
    assert len(resumed.trials) == 5 and calls[4] == calls[3] and len(calls) == 6
    assert resumed.best_params == BEST


def test_order_must_name_searched_parameters() -> None:
    with pytest.raises(ConfigError, match="order"):
        StagedGridSearch(order=["tau", "nope"]).max_trials(SPACE)
