"""Resume after SIGKILL for the Scenario A loops: the lambda loop, a search baseline and weighted_sum.

A killed job continues with ``resume=true`` from its last checkpoint (or study) and ends with the summary and the
metrics lines of an uninterrupted run: no lost and no repeated step or trial. (``train_mnist``, the Alg. 6 schedule
loop and a Bayesian schedule search have their own SIGKILL tests.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ROOT, read_jsonl, run_in_process

SMOKE = ["task=finetune_gaussian", "experiment=smoke", "hardware=cpu", "logger=none"]
CASES: dict[str, tuple[list[str], Callable[[Path], bool]]] = {
    "closed_form": (["upper_estimator=closed_form", "task.checkpoint_every=5"],
                    lambda d: (d / "checkpoints" / "last.pt").exists()),
    "grid": (["upper_estimator=grid", "upper_estimator.n_trials=3"],
             lambda d: (d / "metrics.jsonl").exists() and len(read_jsonl(d / "metrics.jsonl")) >= 2),
    "weighted_sum": (["upper_estimator=weighted_sum"], lambda d: (d / "config.yaml").exists()),
}


def run_and_kill(args: list[str], ready: Callable[[], bool], timeout: float = 120) -> None:
    """``run.py ARGS`` in a child process, killed with SIGKILL as soon as ``ready()``. A process, not a fork of
    pytest: a fork of a process whose OpenMP pool has run hangs in the child (libgomp is not fork-safe)."""
    child = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "BILEVEL_ROOT": str(ROOT)})
    deadline = time.time() + timeout
    while not ready() and time.time() < deadline and child.poll() is None:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()


def _log(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "wall_clock_s"} for row in read_jsonl(run_dir / "metrics.jsonl")]


# slow (fast-suite time): grid (searches resume in test_search.py), weighted_sum (killed at its start, like
# test_run_directory's train_mnist case)
@pytest.mark.parametrize("method", [pytest.param("closed_form"), pytest.param("weighted_sum", marks=pytest.mark.slow),
                                    pytest.param("grid", marks=pytest.mark.slow)])
def test_a_killed_scenario_a_run_resumes_to_the_numbers_of_an_uninterrupted_run(tmp_path, method) -> None:
    extra, ready = CASES[method]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    code, stderr = run_in_process(*SMOKE, *extra, f"hydra.run.dir={straight}")
    assert code == 0, stderr[-2000:]
    run_and_kill([*SMOKE, *extra, f"hydra.run.dir={stopped}"], lambda: ready(stopped))
    assert not (stopped / "summary.json").exists(), "the run finished before it could be stopped"
    code, stderr = run_in_process(*SMOKE, *extra, f"hydra.run.dir={stopped}", "resume=true")
    assert code == 0, stderr[-2000:]
    a, b = (json.loads((d / "summary.json").read_text()) for d in (straight, stopped))
    assert {k: v for k, v in a.items() if k != "wall_clock_s"} == {k: v for k, v in b.items() if k != "wall_clock_s"}
    assert _log(straight) == _log(stopped), "no lost and no repeated step or trial"
