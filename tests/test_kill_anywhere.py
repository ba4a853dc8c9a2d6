"""Every task x upper_estimator pair, killed with SIGKILL at a random point (before its first line included) and
resumed with ``resume=true``, ends with the ``metrics.jsonl`` and ``summary.json`` of an uninterrupted run
(docs/reliability.md). Slow: about 20 s per pair; ``make test-all``."""

from __future__ import annotations

import random
import zlib

import pytest

from conftest import kill_after_lines, read_jsonl, results, run_in_process
from test_task_estimator_pairs import BUDGET, ESTIMATORS, SD_SIZE, SD_TASKS, TASKS, _accepts

#: budgets with a few logged lines each, so that a kill can land between them
LONGER = {"closed_form": ["upper_estimator.num_steps=6", "upper_estimator.refresh_every=3", "task.checkpoint_every=2"],
          "closed_form_pool": ["upper_estimator.num_steps=6", "task.checkpoint_every=2"],
          "grid": ["upper_estimator.n_trials=3"], "random": ["upper_estimator.n_trials=3"],
          "bayesian": ["upper_estimator.n_trials=3", "upper_estimator.n_startup_trials=2"],
          "staged_grid": ["upper_estimator.n_trials=3"], "fixed": ["task.checkpoint_every=2"]}
PAIRS = [(task, estimator) for task in TASKS for estimator in ESTIMATORS
         if task != "finetune_hps" and _accepts(task, estimator)[0]]


@pytest.mark.slow
@pytest.mark.parametrize("task,estimator", PAIRS, ids=[f"{t}-{e}" for t, e in PAIRS])
def test_killed_anywhere_and_resumed_equals_uninterrupted(task, estimator, tmp_path, tiny_dir) -> None:
    model = ["model=tiny", f"model.path={tiny_dir}", *SD_SIZE] if task in SD_TASKS else []
    args = [f"task={task}", f"upper_estimator={estimator}", "experiment=smoke", "hardware=cpu", "logger=none",
            *model, *BUDGET[estimator], *LONGER.get(estimator, [])]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    code, stderr = run_in_process(*args, f"hydra.run.dir={straight}")
    assert code == 0, stderr[-3000:]
    total = len(read_jsonl(straight / "metrics.jsonl"))
    point = random.Random(zlib.crc32(f"{task}-{estimator}".encode())).randint(0, max(total - 1, 0))
    kill_after_lines(args, stopped, point)
    code, stderr = run_in_process(*args, f"hydra.run.dir={stopped}", "resume=true")
    assert code == 0, stderr[-3000:]
    (rows, summary), (rows_again, summary_again) = results(straight), results(stopped)
    differences = [(a["step"], {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)})
                   for a, b in zip(rows, rows_again) if a != b]
    summary_differences = {k: (summary.get(k), summary_again.get(k)) for k in summary.keys() | summary_again.keys()
                           if summary.get(k) != summary_again.get(k)}
    assert (rows, summary) == (rows_again, summary_again), (f"killed after {point} of {total} lines: {differences}; "
                                                            f"summary: {summary_differences}")
