"""``make demo`` (scripts/demo.py): its two jobs are valid command lines, and (slow) it runs end to end."""

from __future__ import annotations

import runpy
import subprocess
import sys

import pytest

from bilevel_diffusion.preflight import check_command_line
from conftest import CONFIGS, ROOT

DEMO = runpy.run_path(str(ROOT / "scripts" / "demo.py"), run_name="demo")


def test_the_demo_jobs_pass_the_preflight_and_take_the_reproduction_settings(tmp_path) -> None:
    jobs = DEMO["jobs"](0)
    for name, command in jobs.items():
        check_command_line([*command, f"hydra.run.dir={tmp_path / name}"], CONFIGS)
    assert "upper_estimator=closed_form" in jobs["bilevel"] and "task.pool_samples=32" in jobs["bilevel"]
    assert "upper_estimator.num_points=3" in jobs["grid"]
    smaller = DEMO["jobs"](0, ["task.pool_samples=8"])["bilevel"]
    assert "task.pool_samples=8" in smaller and "task.pool_samples=32" not in smaller


@pytest.mark.slow
def test_the_demo_runs_and_writes_its_figure_and_account(tmp_path) -> None:
    small = ["task.prompts=[3]", "task.pool_samples=8", "task.trial_samples=4", "eval.num_samples=4",
             "lower_solver.num_steps=2"]
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--out", str(tmp_path), *small],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert "chosen lambda" in done.stdout and "3-point grid" in done.stdout
