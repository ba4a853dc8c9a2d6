"""W&B keeps every row: the offline run files of Scenario A runs hold every ``metrics.jsonl`` row at its step (read
back with the SDK's offline record reader, ``conftest.wandb_history``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import assert_run_contract, read_jsonl, run_cli, run_in_process, wandb_history


def _every_row_is_in_wandb(job: Path) -> dict[int, dict]:
    [run] = list((job / "wandb").glob("offline-run-*"))
    history = wandb_history(run / f"run-{(job / 'wandb_id.txt').read_text()}.wandb")
    expected: dict[int, dict] = {}  # W&B has one row per step: rows logged at one step merge, the later wins
    for row in read_jsonl(job / "metrics.jsonl"):
        expected.setdefault(row.pop("step"), {}).update(row)
    for step, row in expected.items():
        kept = history.get(step, {})
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and v is not None}
        assert all(k in kept and json.loads(kept[k]) == pytest.approx(v) for k, v in numbers.items()), (step, row, kept)
    return expected


@pytest.mark.slow  # the two-job search multirun below checks every row of two runs in the fast suite
def test_a_finetune_gaussian_run_keeps_every_row(tmp_path, smoke_args) -> None:
    result = run_cli("task=finetune_gaussian", *smoke_args, "logger=wandb", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert_run_contract(tmp_path, "finetune_gaussian", "closed_form")
    rows = _every_row_is_in_wandb(tmp_path)
    assert "r1" in rows[max(rows)] and len(rows) > 3, "the bilevel steps and the final report"


def test_a_two_job_search_multirun_keeps_every_trial_row(tmp_path, smoke_args) -> None:
    code, stderr = run_in_process("-m", "task=finetune_gaussian", *smoke_args, "logger=wandb",
                                  "upper_estimator=grid,random", "++upper_estimator.n_trials=3", f"hydra.sweep.dir={tmp_path}")
    assert code == 0, stderr[-2000:]
    for job, method in (("0", "grid"), ("1", "random")):
        assert_run_contract(tmp_path / job, "finetune_gaussian", method)
        rows = _every_row_is_in_wandb(tmp_path / job)
        assert sum("trial" in row for row in rows.values()) == 3, "one row per trial"
