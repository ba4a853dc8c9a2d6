"""``hardware=ddp``: two gloo processes under torchrun give the numbers of one process on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


@pytest.mark.parametrize("case", [pytest.param("finetune_gaussian"),  # ~40 s: sharded sampling, the lambda loop
                                  pytest.param("train_mnist", marks=pytest.mark.slow),  # ~70 s: sharded training
                                  pytest.param("noise_schedule_mnist", marks=pytest.mark.slow)])
def test_two_gloo_processes_give_the_numbers_of_one(tmp_path, case) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    code, stderr = run_in_process(*CASES[case], *SMOKE, "hardware=cpu", f"hydra.run.dir={one}")
    assert code == 0, stderr[-2000:]
    result = torchrun(2, *CASES[case], *SMOKE, "hardware=ddp", f"hydra.run.dir={two}")
    assert result.returncode == 0, result.stderr[-3000:]
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
    assert result.stdout.count("objective=") == 1, "only rank 0 reports"
