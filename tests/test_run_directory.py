"""Runs that cannot be mixed, lost or crashed (docs/reliability.md): a run directory belongs to one run (config
fingerprint, lock), a stopped job resumes to an uninterrupted run's lines, bad values are refused before anything is
written, damaged caches are rebuilt, signals stop at a safe point, and explicit choices win over presets."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from omegaconf import OmegaConf

from bilevel_diffusion.checkpoint import load_cached, load_checkpoint, save_cached, save_checkpoint
from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.preflight import check_command_line
from bilevel_diffusion.run_directory import RunLock
from bilevel_diffusion.tracking.recorder import Recorder
from conftest import CONFIGS, compose, kill_after_lines, read_jsonl, results, run_in_process
from test_resilience import error_line

SMOKE = ["experiment=smoke", "hardware=cpu", "logger=none"]
TINY_B = ["task=noise_schedule_mnist", *SMOKE, "upper_estimator.n_obj=4", "upper_estimator.obj_inference_steps=2",
          "upper_estimator.inner_steps=2", "lower_solver.num_steps=8", "upper_estimator.warmup_fraction=0.25",
          "task.checkpoint_every=2"]


def snapshot(run_dir) -> dict:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished train_mnist smoke run."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    code, stderr = run_in_process("task=train_mnist", *SMOKE, f"hydra.run.dir={run_dir}")
    assert code == 0, stderr[-2000:]
    return run_dir


# -- a run directory belongs to one run ---------------------------------------------------------------------------
@pytest.mark.parametrize("args,named", [
    (["seed=1", "lower_solver.lr=0.5"], ["seed 0 -> 1", "lower_solver.lr 0.002 -> 0.5"]),
    (["task=finetune_gaussian"], ["task.name 'train_mnist' -> 'finetune_gaussian'"]),
    (["lower_solver.num_steps=60"], ["lower_solver.num_steps 6 -> 60"]),  # "train longer" is another run
], ids=["seed and lr", "another task", "more steps"])
def test_resume_with_another_config_is_refused_and_changes_nothing(finished, args, named) -> None:
    before = snapshot(finished)
    code, stderr = run_in_process("task=train_mnist", *SMOKE, *args, f"hydra.run.dir={finished}", "resume=true")
    assert code == 2
    line = error_line(stderr)
    assert line.startswith("error: resume=true with a config that differs") and all(n in line for n in named), line
    assert snapshot(finished) == before


def test_resume_of_a_finished_run_with_its_own_config_is_a_no_op(finished) -> None:
    before = snapshot(finished)
    code, stderr = run_in_process("task=train_mnist", *SMOKE, f"hydra.run.dir={finished}", "resume=true")
    assert code == 0 and snapshot(finished) == before


def test_a_refused_run_dir_given_with_an_interpolation_is_left_untouched(tmp_path) -> None:
    occupied = tmp_path / "occ_0"
    (occupied / ".hydra").mkdir(parents=True)
    (occupied / ".hydra" / "config.yaml").write_text("seed: 7\n")
    (occupied / "summary.json").write_text('{"objective": 1.0}')
    before = snapshot(occupied)
    code, stderr = run_in_process("task=train_mnist", *SMOKE, f"hydra.run.dir={tmp_path}/occ_${{seed}}")
    assert code == 2 and "already holds a run" in error_line(stderr)
    assert snapshot(occupied) == before


def test_a_run_directory_in_use_is_refused_and_a_dead_jobs_lock_is_taken_over(tmp_path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = RunLock(run_dir).acquire()  # a live job (a second open file description conflicts, as across processes)
    code, stderr = run_in_process("task=train_mnist", *SMOKE, f"hydra.run.dir={run_dir}")
    assert code == 2 and f"error: {run_dir} is in use by pid {os.getpid()}" in error_line(stderr)
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"], "the refused job wrote nothing"
    lock.release(remove=False)  # as if killed: the file stays, the OS drops the lock
    code, stderr = run_in_process("task=train_mnist", *SMOKE, f"hydra.run.dir={run_dir}")
    assert code == 0, stderr[-2000:]
    assert not (run_dir / ".lock").exists() and (run_dir / "summary.json").exists()


# -- the log of a stopped and resumed run --------------------------------------------------------------------------
def test_a_resumed_run_keeps_the_old_log_until_it_logs_and_starts_afresh_without_a_checkpoint(tmp_path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "loss": 9}\n{"step": 1, "loss": 8}\n')
    recorder = Recorder(tmp_path, OmegaConf.create({}), resume=True)
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 2, "nothing is dropped before the job logs again"
    recorder.log(0, loss=1.0)
    assert [(r["step"], r["loss"]) for r in read_jsonl(tmp_path / "metrics.jsonl")] == [(0, 1.0)]


def test_a_restored_checkpoint_keeps_exactly_the_lines_it_had_seen(tmp_path) -> None:
    (tmp_path / "metrics.jsonl").write_text("".join(f'{{"step": {s}}}\n' for s in (0, 2, 4, 4, 6)))
    recorder = Recorder(tmp_path, OmegaConf.create({}), resume=True)
    recorder.restore({"wall_clock_s": 12.0, "metrics_lines": 3}, step=4)  # the 2nd step-4 line came after it
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 2, 4]
    assert recorder.wall_clock() >= 12.0 and recorder.checkpoint_fields()["metrics_lines"] == 3


@pytest.mark.parametrize("args,lines,sig", [
    (["task=train_mnist", *SMOKE, "lower_solver.num_steps=12"], 0, signal.SIGKILL),  # before any line
    # slow: test_sigint_stops_with_one_line_and_exit_130 covers the signal path, test_kill_anywhere every pair's resume
    pytest.param(TINY_B, 2, signal.SIGTERM, marks=pytest.mark.slow),
], ids=["train_mnist killed before its first line", "zeroth_order stopped by SIGTERM"])
def test_a_stopped_run_resumes_to_the_lines_of_an_uninterrupted_one(tmp_path, args, lines, sig) -> None:
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    code, stderr = run_in_process(*args, f"hydra.run.dir={straight}")
    assert code == 0, stderr[-2000:]
    code = kill_after_lines(args, stopped, lines, sig)
    assert code == (-9 if sig == signal.SIGKILL else 143)
    assert not (stopped / "summary.json").exists()
    if sig == signal.SIGTERM:
        assert (stopped / "checkpoints" / "last.pt").exists(), "SIGTERM writes a checkpoint first"
    stale = stopped / "checkpoints" / ".last.pt.x1y2.tmp"  # as left by a SIGKILL during a checkpoint write
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"half a checkpoint")
    code, stderr = run_in_process(*args, f"hydra.run.dir={stopped}", "resume=true")
    assert code == 0, stderr[-2000:]
    assert results(stopped) == results(straight)
    assert not stale.exists(), "temp files of a killed write are cleaned on the next start"


def test_sigint_stops_with_one_line_and_exit_130(tmp_path) -> None:
    import subprocess
    import sys

    from conftest import ROOT

    run_dir = tmp_path / "run"
    child = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "task=train_mnist", *SMOKE,
                              "lower_solver.num_steps=100000", f"hydra.run.dir={run_dir}"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    while child.poll() is None and not (run_dir / "checkpoints" / "last.pt").exists():
        time.sleep(0.02)  # not a busy loop: it would take a core from the child and the other worker
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130
    assert stderr.strip().splitlines()[-1].startswith("stopped by SIGINT after training step "), stderr[-2000:]
    assert "Traceback" not in stderr


# -- every bad value before any work -------------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["eval.num_samples=1e9"], "eval.num_samples must be an integer"),
    (["eval.num_samples=100000000"], "eval.num_samples must be at most 1,000,000"),
    (["lower_solver.lr=abc"], "lower_solver.lr must be a number (got 'abc')"),
    (["lower_solver.lrr=0.1"], "unknown key lower_solver.lrr; did you mean lower_solver.lr?"),
    (["upper_estimator=closedform"], "unknown upper_estimator 'closedform'; did you mean closed_form?"),
    (["task.checkpoint_every=-1"], "task.checkpoint_every must be an integer >= 0"),
    (["hydra.run.dir=/etc/hostname/run"], "cannot create hydra.run.dir=/etc/hostname/run: /etc/hostname is a file"),
])
def test_bad_values_are_refused_by_the_preflight(args, message) -> None:
    with pytest.raises(ConfigError) as err:
        check_command_line(["task=train_mnist", *args], CONFIGS)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize("args,message", [
    (["task=finetune_gaussian", "lower_solver=score_matching"],
     "task=finetune_gaussian does not take lower_solver=score_matching; choose one of: guided_sampling"),
    (["task=finetune_mnist", "upper_estimator=zeroth_order"],
     "task=finetune_mnist does not take upper_estimator=zeroth_order"),
    (["task=train_mnist", "lower_solver.batch_size=100000000"],
     "lower_solver.batch_size=100,000,000 exceeds the 4,000 training images"),
], ids=["task x solver", "task x estimator", "batch above the data"])
def test_bad_combinations_are_refused_before_anything_is_written(tmp_path, args, message) -> None:
    code, stderr = run_in_process(*SMOKE, *args, f"hydra.run.dir={tmp_path}/run")
    assert code == 2 and error_line(stderr).startswith(f"error: {message}")
    assert not (tmp_path / "run").exists()


def test_checkpoint_every_zero_means_only_at_the_end(tmp_path) -> None:
    code, stderr = run_in_process(*TINY_B, "task.checkpoint_every=0", f"hydra.run.dir={tmp_path}")
    assert code == 0, stderr[-2000:]
    assert (tmp_path / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("task", ["finetune_gaussian", "finetune_mnist", "finetune_aesthetic", "train_mnist",
                                  "noise_schedule_mnist"])
def test_every_loop_checkpoints_by_default(task) -> None:
    assert compose(f"task={task}").task.checkpoint_every >= 1


# -- caches and checkpoints that do not load -----------------------------------------------------------------------
def test_a_damaged_cache_file_is_detected_and_dropped(tmp_path, capsys) -> None:
    path = tmp_path / "weights.safetensors"
    tensors = {"w": torch.arange(64.0).reshape(8, 8)}
    digest = save_cached(tensors, path, {"what": "test"})
    assert torch.equal(load_cached(path)["w"], tensors["w"])
    assert OmegaConf.load(path.with_suffix(".json"))["sha256"] == digest
    data = bytearray(path.read_bytes())
    data[-8:] = b"\x7f" * 8  # garbage in the last tensor bytes: still a valid file
    path.write_bytes(bytes(data))
    assert load_cached(path) is None and not path.exists()
    assert "fails its checksum; building it again" in capsys.readouterr().err
    save_cached(tensors, path)
    path.write_bytes(path.read_bytes()[:40])  # truncated
    assert load_cached(path) is None and not path.exists()


def test_a_damaged_proxy_cache_is_rebuilt(tmp_path) -> None:
    from bilevel_diffusion.data.mnist import load_mnist5k
    from bilevel_diffusion.rewards.mnist import load_or_train_proxy

    data = load_mnist5k(cache_dir=tmp_path)
    first = load_or_train_proxy(data, 5, tmp_path).state_dict()
    [path] = (tmp_path / "finetune_mnist").glob("proxy_*.safetensors")
    path.write_bytes(path.read_bytes()[:-16] + b"\x00" * 16)
    again = load_or_train_proxy(data, 5, tmp_path).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first) and load_cached(path) is not None


def test_a_truncated_checkpoint_is_one_line_that_says_what_to_do(tmp_path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 3, "x": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ConfigError, match="is damaged: start the run again in a new hydra.run.dir"):
        load_checkpoint(path)


def test_damaged_mnist_idx_files_are_one_line(tmp_path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(os.urandom(100))
    code, stderr = run_in_process("task=train_mnist", *SMOKE, "data=mnist", f"data.root={tmp_path}",
                                  f"hydra.run.dir={tmp_path}/run")
    assert code == 2 and error_line(stderr).startswith(f"error: the MNIST IDX files under {raw} cannot be read")


# -- explicit choices win ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("experiment", ["smoke", "demo_train", "schedule_quick", "scenario_a_quick"])
def test_a_hardware_chosen_on_the_command_line_beats_the_experiments(experiment) -> None:
    assert compose(f"experiment={experiment}").hardware.device == "cpu"
    assert compose(f"experiment={experiment}", "hardware=gpu").hardware.device == "cuda"
    assert compose("hardware=gpu", f"experiment={experiment}").hardware.device == "cuda"


def test_wandb_online_without_credentials_fails_at_once_or_falls_back(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    online = ["task=train_mnist", "logger=wandb", "logger.mode=online", f"hydra.run.dir={tmp_path}/run"]
    with pytest.raises(ConfigError, match="logger.mode=online needs W&B credentials"):
        check_command_line(online, CONFIGS)
    check_command_line([*online, "logger.fallback_offline=true"], CONFIGS)


def test_a_multirun_is_checked_with_each_swept_group_option() -> None:
    sweep = ["-m", "task=noise_schedule_mnist", "upper_estimator=grid,random"]
    check_command_line([*sweep, "upper_estimator.n_trials=2"], CONFIGS)  # a key every swept option has
    with pytest.raises(ConfigError, match="unknown key upper_estimator.num_points"):
        check_command_line([*sweep, "upper_estimator.num_points=3"], CONFIGS)  # random has no num_points
