"""The worked examples of the README ("Use your own ..."), run as a user runs them (examples/)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, assert_run_contract, read_jsonl, run_in_process

SMOKE = ["experiment=smoke", "hardware=cpu", "logger=none"]


def test_your_own_reward_replaces_r2_and_guidance_follows_it(tmp_path) -> None:
    code, stderr = run_in_process("task=finetune_mnist", *SMOKE, "task._target_=examples.thick_strokes.ThickStrokes",
                                  "upper_estimator=grid", "upper_estimator.num_points=2", f"hydra.run.dir={tmp_path}")
    assert code == 0, stderr[-2000:]
    assert_run_contract(tmp_path, "finetune_mnist", "grid")
    trials = sorted((row for row in read_jsonl(tmp_path / "metrics.jsonl") if "trial" in row),
                    key=lambda row: row["lambda"])
    assert trials[0]["r2"] > trials[-1]["r2"], "strong guidance (small lambda) must raise the mean brightness"


def test_your_own_estimator_runs_as_a_search(tmp_path) -> None:
    code, stderr = run_in_process("task=finetune_gaussian", *SMOKE, "upper_estimator=random",
                                  "upper_estimator._target_=examples.sobol_search.SobolSearch", "upper_estimator.name=sobol",
                                  "upper_estimator.n_trials=5", f"hydra.run.dir={tmp_path}")
    assert code == 0, stderr[-2000:]
    summary = assert_run_contract(tmp_path, "finetune_gaussian", "sobol")
    assert summary["trials"] == 5


@pytest.mark.slow
def test_your_own_model_trains_after_copying_its_config(tmp_path) -> None:
    repo = tmp_path / "repo"  # a copy of the repository with the example's config copied in, as the README says
    for part in ("configs", "examples"):
        shutil.copytree(ROOT / part, repo / part)
    shutil.copy(ROOT / "run.py", repo)
    shutil.copy(ROOT / "examples" / "configs" / "model" / "mlp_eps.yaml", repo / "configs" / "model")
    run_dir = tmp_path / "run"
    small = ["hardware=cpu", "logger=none", "lower_solver.num_steps=6", "lower_solver.batch_size=16",
             "eval.num_samples=32", "eval.num_inference_steps=3", "eval.batch_size=32", "eval.grid_size=16"]
    done = subprocess.run([sys.executable, "run.py", "task=train_mnist", "model=mlp_eps", *small,
                           f"paths.cache_dir={ROOT / 'outputs' / 'cache'}", f"hydra.run.dir={run_dir}"],
                          cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = assert_run_contract(run_dir, "train_mnist", "fixed")
    assert summary["num_parameters"] == sum(p.numel() for p in __import__("examples.mlp_eps", fromlist=["MLPEps"])
                                            .MLPEps().parameters())
