"""Scenario A tasks through run.py: the run contract for every upper_estimator, lambda* (bad input: test_resilience)."""

from __future__ import annotations

import json
import math

import pytest

from conftest import assert_run_contract, read_jsonl, run_cli

ESTIMATORS = ["closed_form", "grid", "random", "bayesian", "weighted_sum"]


def test_every_upper_estimator_writes_the_run_contract_on_finetune_gaussian(tmp_path, smoke_args) -> None:
    result = run_cli("-m", "task=finetune_gaussian", *smoke_args, f"upper_estimator={','.join(ESTIMATORS)}",
                     f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    for num, method in enumerate(ESTIMATORS):
        run_dir = tmp_path / str(num)
        summary = assert_run_contract(run_dir, "finetune_gaussian", method)
        for key in ("lambda", "lambda_star", "r1", "r2", "fid_vs_pretrained", "method_nfe"):
            assert key in summary, f"{method}: summary.json lacks {key}"
        assert summary["objective"] == pytest.approx(-summary["r1"])
        assert summary["sampler_nfe"] > summary["method_nfe"] >= 0
        assert (run_dir / "samples.png").is_file()
    bilevel = read_jsonl(tmp_path / "0" / "metrics.jsonl")
    assert {"lambda", "hypergrad", "ess"} <= set(bilevel[0]) and (tmp_path / "0" / "lambda_trace.png").is_file()
    grid = json.loads((tmp_path / "1" / "summary.json").read_text())
    assert grid["trials"] == 5 and min(abs(math.log10(grid["lambda"]) - k) for k in range(-2, 3)) < 1e-9
    assert (tmp_path / "1" / "rewards_vs_lambda.png").is_file() and (tmp_path / "1" / "study.db").is_file()


def test_finetune_mnist_smoke_writes_the_run_contract(tmp_path, smoke_args) -> None:
    result = run_cli("task=finetune_mnist", *smoke_args, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = assert_run_contract(tmp_path, "finetune_mnist", "closed_form")
    assert summary["prompts"] == [3] and summary["fid_vs_pretrained"] >= 0 and summary["r1"] <= 0


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [[], ["task.mean=[1.0,0.0,2.0]", "task.cov_diag=[0.3,2.0,1.0]",
                                            "task.reward_direction=[1.0,-0.5,0.2]", "task.target=[3.0,-4.0,2.0]"]],
                         ids=["default", "3d"])
def test_finetune_gaussian_lands_within_5_percent_of_lambda_star(tmp_path, overrides) -> None:
    result = run_cli("task=finetune_gaussian", "hardware=cpu", *overrides, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["lambda"] == pytest.approx(summary["lambda_star"], rel=0.05)
