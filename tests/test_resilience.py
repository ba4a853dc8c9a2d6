"""Bad input and numerical faults through run.py: one ``error:`` line on stderr, exit 2 (bad input) or 3 (NaN/Inf),
nothing earlier lost, the last good checkpoint kept.

The jobs run in this process (:func:`conftest.run_in_process`) so that the heavy imports are paid once and faults
can be injected with ``monkeypatch``.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from conftest import run_in_process

SMOKE = ["experiment=smoke", "hardware=cpu", "logger=none"]
TINY_B = ["task=noise_schedule_mnist", *SMOKE, "upper_estimator.n_obj=4", "upper_estimator.obj_inference_steps=2",
          "upper_estimator.inner_steps=2", "lower_solver.num_steps=8", "upper_estimator.warmup_fraction=0.25",
          "task.checkpoint_every=2"]


def error_line(stderr: str) -> str:
    """The single line on stderr (tqdm bars of work done before the fault aside), which must start ``error:``."""
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and stderr.strip().splitlines()[-1] == lines[0], stderr[-2000:]
    return lines[0]


BAD_INPUT = {
    "unknown task": (["task=nope"], "unknown task 'nope'; choose one of: finetune_aesthetic"),
    "unknown option": (["task=finetune_gaussian", "upper_estimator=closed_form,nope"],
                       "unknown upper_estimator 'nope'; choose one of:"),
    "lambda_init outside the box": (["task=finetune_gaussian", "upper_estimator.lambda_init=1000"],
                                    "upper_estimator.lambda_init=1000.0 is outside task.lambda_box [0.01, 100.0]"),
    "weighted_sum lam outside the box": (["task=finetune_gaussian", "upper_estimator=weighted_sum",
                                          "upper_estimator.lam=1e-5"],
                                         "upper_estimator.lam=1e-05 is outside task.lambda_box [0.01, 100.0]"),
    "gamma <= 0 (Scenario A)": (["task=finetune_gaussian", "upper_estimator.gamma=-1"],
                                "upper_estimator.gamma must be > 0"),
    "gamma <= 0 (Scenario B)": (["task=noise_schedule_mnist", "upper_estimator.gamma=0"],
                                "upper_estimator.gamma and gamma_end must be > 0"),
    "delta <= 0": (["task=noise_schedule_mnist", "upper_estimator.delta=0"],
                   "upper_estimator.delta and delta_z must be > 0 (got 0"),
    "negative learning rate": (["task=train_mnist", "lower_solver.lr=-1"], "lower_solver.lr must be a number > 0 (got -1)"),
    "warm-up ending at step 0": (["task=train_mnist", "lower_solver.num_steps=4"],
                                 "lower_solver.num_steps=4 with pct_start=0.25 puts the end of the warm-up at step 0"),
    "one FID sample": (["task=train_mnist", "eval.num_samples=1"], "eval.num_samples must be an integer >= 2 (got 1)"),
    "empty prompt list": (["task=finetune_mnist", "task.prompts=[]"], "task.prompts must be a non-empty list"),
    "missing data folder": (["task=train_mnist", "data=mnist", "data.root={tmp}/no_mnist"],
                            "MNIST not found under {tmp}/no_mnist"),
    "ddp without torchrun": (["task=train_mnist", "hardware=ddp"], "hardware=ddp runs under torchrun: torchrun"),
    "missing checkpoint": (["task=finetune_aesthetic", "model.weights_dir={tmp}/no_weights", "model.download=false"],
                           "CLIP ViT-B/16 weights not found at {tmp}/no_weights/clip/ViT-B-16.pt"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT), ids=list(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_2(tmp_path, case) -> None:
    args, message = BAD_INPUT[case]
    code, stderr = run_in_process(*SMOKE, *[a.format(tmp=tmp_path) for a in args], f"hydra.run.dir={tmp_path}/run")
    assert code == 2
    assert error_line(stderr).startswith(f"error: {message.format(tmp=tmp_path)}")
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "summary.json").exists()


def test_a_directory_holding_another_run_is_refused_and_left_as_it_was(tmp_path) -> None:
    earlier = {"summary.json": '{"objective": 1.0}', "metrics.jsonl": '{"step": 0}\n', "config.yaml": "seed: 7\n"}
    for name, text in earlier.items():
        (tmp_path / name).write_text(text)
    code, stderr = run_in_process("task=train_mnist", *SMOKE, f"hydra.run.dir={tmp_path}")
    assert code == 2
    assert error_line(stderr) == (f"error: {tmp_path} already holds a run (metrics.jsonl, summary.json); pass "
                                  f"resume=true to continue it or choose another hydra.run.dir")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == earlier, "nothing earlier is lost or added"


# -- numerical faults -------------------------------------------------------------------------------------------
def test_a_non_finite_reward_stops_the_lambda_loop_at_its_step(tmp_path) -> None:
    code, stderr = run_in_process("task=finetune_gaussian", *SMOKE, "task.target=[inf,0.0]",
                                  f"hydra.run.dir={tmp_path}")
    assert code == 3
    assert error_line(stderr).startswith("error: non-finite reward r1 (512 of 512 samples, prompt #0) at bilevel "
                                         "step 0; the last good checkpoint is kept (upper_estimator.on_nonfinite")
    assert not (tmp_path / "summary.json").exists()


def _nan_at_call(monkeypatch, module, name: str, call: int, poison) -> None:
    """Make the ``call``-th call of ``module.name`` (1-based) return ``poison(result)``."""
    real, calls = getattr(module, name), []

    def patched(*args, **kwargs):
        calls.append(1)
        result = real(*args, **kwargs)
        return poison(result) if len(calls) == call else result
    monkeypatch.setattr(module, name, patched)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_non_finite_hypergradient_stops_or_is_skipped_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch,
                                                                                           policy) -> None:
    from bilevel_diffusion.upper_estimators import closed_form

    _nan_at_call(monkeypatch, closed_form, "hypergradient", 8,
                 lambda h: dataclasses.replace(h, grad=float("nan")))
    code, stderr = run_in_process("task=finetune_gaussian", *SMOKE, "upper_estimator.num_steps=12",
                                  "task.checkpoint_every=3", f"upper_estimator.on_nonfinite={policy}",
                                  f"hydra.run.dir={tmp_path}")
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    if policy == "skip":
        assert code == 0, stderr[-2000:]
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert state["step"] == 12 and math.isfinite(summary["lambda"]) and math.isfinite(summary["r1"])
        return
    assert code == 3
    assert error_line(stderr).startswith("error: non-finite hyper-gradient (lambda=")
    assert "at bilevel step 7;" in stderr
    assert state["step"] == 6 and torch.isfinite(state["theta"]) and not (tmp_path / "summary.json").exists()


def test_a_non_finite_schedule_hypergradient_stops_scenario_b_at_its_step(tmp_path, monkeypatch) -> None:
    from bilevel_diffusion.upper_estimators import zeroth_order

    _nan_at_call(monkeypatch, zeroth_order, "penalty_gradients", 2,
                 lambda g: dataclasses.replace(g, upper=torch.full_like(g.upper, float("nan"))))
    code, stderr = run_in_process(*TINY_B, f"hydra.run.dir={tmp_path}")
    assert code == 3
    assert error_line(stderr).startswith("error: non-finite schedule hyper-gradient at outer step 3 (theta_y step 6)")
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert state["solver"]["step_count"] == 4 and torch.isfinite(state["schedule"]["raw"]).all()
    assert not (tmp_path / "summary.json").exists()


def test_a_non_finite_lambda_after_a_step_stops_the_loop(tmp_path) -> None:
    from bilevel_diffusion.errors import NumericalFault
    from bilevel_diffusion.upper_estimators.closed_form import ClosedFormEstimator, RewardPool
    from test_search import make_ctx

    flat = RewardPool(torch.zeros(8, dtype=torch.float64), torch.linspace(0, 1, 8, dtype=torch.float64))
    estimator = ClosedFormEstimator(lambda_init=1.0, optimizer="sgd", lr=float("inf"), refresh_every=0)
    with pytest.raises(NumericalFault, match="non-finite lambda at bilevel step 0"):  # inf * zero gradient = NaN
        estimator.optimise(lambda lam_ref, step: [flat], make_ctx(tmp_path), (1e-3, 1e3))
