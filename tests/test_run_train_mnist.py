"""``task=train_mnist`` through run.py: the run contract, resume after a stop, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, assert_run_contract, read_jsonl, run_cli, run_in_process, wandb_history, wandb_records


def test_smoke_run_writes_the_run_contract(tmp_path, smoke_args) -> None:
    code, stderr = run_in_process("task=train_mnist", *smoke_args, f"hydra.run.dir={tmp_path}")
    assert code == 0, stderr[-2000:]
    summary = assert_run_contract(tmp_path, "train_mnist", "fixed")
    assert summary["fid"] > 0 and summary["is"] >= 1.0 and summary["objective"] == summary["fid"]
    assert summary["sampler_nfe"] == 32 * 3
    assert isinstance(summary["kid"], float) and summary["eval_num_samples"] == 32  # KID and n beside the FID
    assert summary["schedule"]["name"] == "cosine" and summary["fid_features"].startswith("mnist_classifier")
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "checkpoints" / "last.pt").is_file()
    assert [row["step"] for row in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in row] == [2, 4, 6]


@pytest.mark.slow  # fast-suite time; kill + resume stays in the fast suite through test_resume and test_run_directory
def test_resume_after_sigkill_gives_the_numbers_of_an_uninterrupted_run(tmp_path, smoke_args) -> None:
    args = [*smoke_args, "lower_solver.num_steps=40", "task.checkpoint_every=10", "task.log_every=5"]
    straight = tmp_path / "straight"
    assert run_cli(*args, f"hydra.run.dir={straight}").returncode == 0

    stopped = tmp_path / "stopped"  # with W&B (offline), to check that the resumed job continues the same W&B run
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, "logger=wandb", f"hydra.run.dir={stopped}"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = stopped / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (stopped / "summary.json").exists(), "the run finished before it could be stopped"

    refused = run_cli(*args, f"hydra.run.dir={stopped}")
    assert refused.returncode == 2 and "resume=true" in refused.stderr

    resumed = run_cli(*args, "logger=wandb", f"hydra.run.dir={stopped}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run_id = (stopped / "wandb_id.txt").read_text()
    wandb_runs = sorted((stopped / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2 and all((d / f"run-{run_id}.wandb").is_file() for d in wandb_runs), \
        "the resumed job must log to the W&B run of the stopped one"
    a = json.loads((straight / "summary.json").read_text())
    b = json.loads((stopped / "summary.json").read_text())
    assert a["fid"] == b["fid"] and a["is"] == b["is"]
    losses = lambda d: [(r["step"], r["loss"]) for r in read_jsonl(d / "metrics.jsonl") if "loss" in r]  # noqa: E731
    assert losses(straight) == losses(stopped), "no lost and no repeated step"


def test_unknown_task_is_one_clear_error() -> None:
    result = run_cli("task=no_such_task")
    assert result.returncode != 0
    assert "no_such_task" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow  # test_wandb's two-job search multirun covers a multirun's W&B runs in the fast suite
def test_multirun_sweep_logs_one_wandb_run_per_job(tmp_path, smoke_args) -> None:
    result = run_cli("-m", "task=train_mnist", *smoke_args, "logger=wandb", "seed=0,1", "eval.num_samples=8",
                     "eval.batch_size=8", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    ids = []
    for job in ("0", "1"):
        summary = assert_run_contract(tmp_path / job, "train_mnist", "fixed")
        assert summary["seed"] == int(job)
        runs = list((tmp_path / job / "wandb").glob("offline-run-*"))
        ids.append((tmp_path / job / "wandb_id.txt").read_text())
        assert len(runs) == 1 and (runs[0] / f"run-{ids[-1]}.wandb").is_file()
        records = wandb_records(runs[0] / f"run-{ids[-1]}.wandb")
        history = wandb_history(runs[0] / f"run-{ids[-1]}.wandb")
        expected: dict[int, dict] = {}  # W&B has one row per step: rows logged at one step merge, the later wins
        for row in read_jsonl(tmp_path / job / "metrics.jsonl"):
            expected.setdefault(row.pop("step"), {}).update(row)
        assert "fid" in expected[max(expected)]
        for step, row in expected.items():  # every row, the final FID one included
            kept = history.get(step, {})
            assert all(k in kept and json.loads(kept[k]) == pytest.approx(v) for k, v in row.items()), (row, kept)
        assert "samples/path" in history[max(history)], "the sample grid is an image of the last step"
        groups = {r.run.run_group for r in records if r.HasField("run")}
        assert groups == {tmp_path.name}, "the jobs of a sweep are one W&B group"
    assert ids[0] != ids[1]


def test_diverging_run_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, smoke_args) -> None:
    import torch

    code, stderr = run_in_process(*smoke_args, "lower_solver.lr=1e30", "lower_solver.pct_start=0.01",
                                  "task.checkpoint_every=1", f"hydra.run.dir={tmp_path}")
    assert code == 3, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: non-finite score-matching") and "at step" in last
    bad_step = int(last.split("at step ")[1].split(";")[0])
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == bad_step - 1
    assert all(torch.isfinite(v).all() for v in state["solver"]["model"].values() if v.is_floating_point())
    assert not (tmp_path / "summary.json").exists()
