"""Every task x upper_estimator pair through run.py: it runs at smoke size and writes the run contract, or it is
refused before any work with one ``error:`` line and exit 2 (``Task.accepts``, docs/design.md). ``finetune_hps``
gets past the pair check and stops at the one line that says its HPSv2 weights are missing (no tiny HPSv2 exists)."""

from __future__ import annotations

import functools

import pytest
from hydra.utils import get_class

from conftest import CONFIGS, assert_run_contract, compose, run_in_process

TASKS = sorted(path.stem for path in (CONFIGS / "task").glob("*.yaml"))
ESTIMATORS = sorted(path.stem for path in (CONFIGS / "upper_estimator").glob("*.yaml"))
SD_TASKS = {"finetune_aesthetic", "finetune_hps", "finetune_synthetic"}
#: the smallest budget of each estimator (a new option without an entry here fails the walk)
BUDGET = {
    "bayesian": ["upper_estimator.n_trials=1", "upper_estimator.n_startup_trials=1"],
    "closed_form": ["upper_estimator.num_steps=3", "upper_estimator.refresh_every=2"],
    "closed_form_pool": ["upper_estimator.num_steps=3"],
    "fixed": [],
    "grid": ["upper_estimator.n_trials=1"],
    "random": ["upper_estimator.n_trials=1"],
    "sampler_difference": ["upper_estimator.num_steps=1"],
    "staged_grid": ["upper_estimator.n_trials=1"],
    "weighted_sum": [],
    "zeroth_order": ["lower_solver.num_steps=8", "upper_estimator.inner_steps=2", "upper_estimator.n_obj=4",
                     "upper_estimator.obj_inference_steps=2"],
}
#: the Stable Diffusion tasks on the tiny models: one prompt, two samples, two sampler steps
SD_SIZE = ["task.prompts=[fox]", "task.pool_samples=2", "task.trial_samples=2", "eval.num_samples=2",
           "lower_solver.num_steps=2"]


@functools.cache
def _task_class(task: str) -> type:
    return get_class(compose(f"task={task}").task._target_)


@functools.cache
def _estimator(estimator: str) -> tuple[type, str]:
    cfg = compose(f"upper_estimator={estimator}").upper_estimator
    return get_class(cfg._target_), str(cfg.name)


def _accepts(task: str, estimator: str) -> tuple[bool, str]:
    """Whether the task's class accepts the estimator's class, and the estimator's ``name``."""
    cls, name = _estimator(estimator)
    return issubclass(cls, _task_class(task).accepts), name


def test_every_task_accepts_some_estimators_and_refuses_others() -> None:
    table = {task: {e for e in ESTIMATORS if _accepts(task, e)[0]} for task in TASKS}
    assert table["train_mnist"] == {"fixed"}
    assert table["noise_schedule_mnist"] == {"zeroth_order", "fixed", "grid", "random", "bayesian", "staged_grid"}
    assert table["noise_schedule_gmm"] == table["noise_schedule_mnist"] and table["train_gmm"] == {"fixed"}
    for task in ("finetune_gaussian", "finetune_mnist", *SD_TASKS):
        assert table[task] == {"closed_form", "closed_form_pool", "sampler_difference", "grid", "random", "bayesian",
                               "weighted_sum"}
    assert set(BUDGET) == set(ESTIMATORS)


def _pairs() -> list:
    """Every (task, estimator); the testbed's accepted pairs are slow-marked: the reproduce smoke plan runs three of
    them through run.py in the fast suite, train_gmm covers its experiment=smoke settings, and the others share
    noise_schedule_mnist's code. So are sampler_difference on the Stable Diffusion tasks (the same RewardProblem
    code as finetune_mnist, which stays fast)."""
    slow = {("noise_schedule_gmm", e) for e in ("zeroth_order", "fixed", "grid", "random", "bayesian", "staged_grid")}
    slow |= {(task, "sampler_difference") for task in SD_TASKS}
    return [pytest.param(t, e, marks=pytest.mark.slow) if (t, e) in slow else (t, e)
            for t in TASKS for e in ESTIMATORS]


@pytest.mark.parametrize(("task", "estimator"), _pairs())
def test_a_pair_runs_at_smoke_size_or_is_refused_before_any_work(task, estimator, tmp_path, tiny_dir) -> None:
    run_dir = tmp_path / "run"
    model = ["model=tiny", f"model.path={tiny_dir}", *SD_SIZE] if task in SD_TASKS else []
    args = [f"task={task}", f"upper_estimator={estimator}", "experiment=smoke", "hardware=cpu", "logger=none",
            *model, *BUDGET[estimator], f"hydra.run.dir={run_dir}"]
    accepted, name = _accepts(task, estimator)
    code, stderr = run_in_process(*args)
    if not accepted:
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1, stderr
        assert errors[0].startswith(f"error: task={task} does not take upper_estimator={estimator}; choose one of:")
        assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "summary.json").exists()
        return
    if task == "finetune_hps":  # the tiny models have no HPSv2 (it needs open_clip_torch and its checkpoint)
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and "HPSv2" in errors[0], stderr[-3000:]
        return
    assert code == 0, stderr[-3000:]
    summary = assert_run_contract(run_dir, task, name)
    if task in SD_TASKS:
        assert summary["clip_score"] == summary["r1"] and summary["reward"] == summary["r2"]
        assert summary["fid_features"].startswith("clip ViT-B/16") and summary["prompts"] == ["fox"]
        assert 0.01 <= summary["lambda"] <= 100 and summary["sampler_cost"] >= summary["sampler_nfe"]
