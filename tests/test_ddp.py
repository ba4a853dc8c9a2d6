"""``hardware=ddp``: two gloo processes give the numbers of one process on the same global batch.

The fast tests fork the two ranks from this process (torchrun's environment variables set by hand, the imports
already paid); the slow ones start them with torchrun itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, read_jsonl, run_in_process

SMOKE = ["experiment=smoke", "logger=none"]
CASES = {
    "train_mnist": ["task=train_mnist", "eval.num_samples=16"],
    "finetune_gaussian": ["task=finetune_gaussian", "upper_estimator.num_steps=12"],
    "noise_schedule_mnist": ["task=noise_schedule_mnist", "upper_estimator.n_obj=4",
                             "upper_estimator.obj_inference_steps=2", "upper_estimator.inner_steps=2",
                             "lower_solver.num_steps=8", "upper_estimator.warmup_fraction=0.25"],
}
#: summary keys compared, and their relative tolerance (float rounding of the split batch, amplified by FID)
KEYS = {"fid": 5e-3, "is": 1e-3, "lambda": 1e-6, "r1": 1e-6, "r2": 1e-6, "objective": 5e-3}


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BILEVEL_ROOT": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           str(ROOT / "run.py"), *args], capture_output=True, text=True, timeout=600, env=env,
                          cwd=ROOT)


def forked_ranks(nproc: int, *args: str, timeout: float = 300) -> list[int]:
    """``run.py ARGS`` as ``nproc`` forked ranks of one gloo group; their exit statuses."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pids = []
    for rank in range(nproc):
        pid = os.fork()
        if pid == 0:  # a rank: torchrun's variables, the job, then leave without pytest's teardown
            os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                              MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            code = 1
            try:
                code = run_in_process(*args)[0]
            finally:
                os._exit(code)
        pids.append(pid)
    codes, deadline = {}, time.time() + timeout
    while len(codes) < nproc and time.time() < deadline:
        for pid in set(pids) - set(codes):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                codes[pid] = os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    for pid in set(pids) - set(codes):  # hung: kill it and report it as such
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        codes[pid] = -9
    return [codes[pid] for pid in pids]


def assert_same_numbers(one: Path, two: Path) -> None:
    """Summary numbers within :data:`KEYS`' tolerances, the same NFEs and the same loss curve (to 1e-5)."""
    a, b = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    for key, rel in KEYS.items():
        if key in a:
            assert b[key] == pytest.approx(a[key], rel=rel), key
    assert a["sampler_nfe"] == b["sampler_nfe"]
    rows = [[r for r in read_jsonl(d / "metrics.jsonl") if "loss" in r or "loss_y" in r] for d in (one, two)]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]]
    for x, y in zip(*rows):
        loss = "loss" if "loss" in x else "loss_y"
        assert y[loss] == pytest.approx(x[loss], rel=1e-5)


def run_one(case: str, run_dir: Path) -> None:
    code, stderr = run_in_process(*CASES[case], *SMOKE, "hardware=cpu", f"hydra.run.dir={run_dir}")
    assert code == 0, stderr[-2000:]


@pytest.mark.parametrize("case", ["train_mnist", "finetune_gaussian"])
def test_two_forked_gloo_ranks_give_the_numbers_of_one_process(tmp_path, case) -> None:
    run_one(case, tmp_path / "one")
    assert forked_ranks(2, *CASES[case], *SMOKE, "hardware=ddp", f"hydra.run.dir={tmp_path / 'two'}") == [0, 0]
    assert_same_numbers(tmp_path / "one", tmp_path / "two")
    assert not list(tmp_path.glob("two/*rank*")), "only rank 0 writes the run directory"


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_torchrun_with_two_gloo_processes_gives_the_numbers_of_one_process(tmp_path, case) -> None:
    run_one(case, tmp_path / "one")
    result = torchrun(2, *CASES[case], *SMOKE, "hardware=ddp", f"hydra.run.dir={tmp_path / 'two'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_numbers(tmp_path / "one", tmp_path / "two")
    assert result.stdout.count("objective=") == 1, "only rank 0 reports"
