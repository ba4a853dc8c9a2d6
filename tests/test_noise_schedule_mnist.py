"""``task=noise_schedule_mnist``: the Alg. 6 loop on a tiny model, and every method through run.py."""

from __future__ import annotations

import copy
import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.tracking.recorder import Recorder
from bilevel_diffusion.upper_estimators.zeroth_order import PenaltyLoop
from conftest import ROOT, assert_run_contract, compose, read_jsonl, run_cli

TINY = ["task=noise_schedule_mnist", "experiment=smoke", "hardware=cpu", "upper_estimator.n_obj=4",
        "upper_estimator.obj_inference_steps=2", "upper_estimator.inner_steps=2", "lower_solver.num_steps=8",
        "upper_estimator.warmup_fraction=0.25"]
INITIAL = {"start": 0.0, "end": 1.0, "tau": 1.0, "eps": 0.008}


def _problem(run_dir: Path, *overrides: str):
    """The Scenario B problem of task=noise_schedule_mnist as run.py builds it, and its config."""
    cfg = compose(*TINY, *overrides)
    ctx = RunContext(run_dir=run_dir, cache_dir=Path(cfg.paths.cache_dir), device=torch.device("cpu"),
                     dtype=torch.float32, seed=0, resume=False, recorder=Recorder(run_dir, cfg))
    return instantiate(cfg.task).problem(ctx), cfg, ctx


@pytest.fixture(scope="module")
def make_trainer(tmp_path_factory):
    """Builds a fresh Alg. 6 loop on the tiny settings."""
    def make() -> PenaltyLoop:
        problem, cfg, ctx = _problem(tmp_path_factory.mktemp("bilevel"))
        return PenaltyLoop(instantiate(cfg.upper_estimator), problem, ctx)
    return make


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_theta_z_is_a_persistent_copy_that_moves_and_differs_from_theta_y(make_trainer) -> None:
    trainer = make_trainer()
    assert (trainer.warmup_outer, trainer.bilevel_outer) == (1, 3)
    warmup = trainer.step()
    assert "objective_fid" not in warmup and trainer.schedule.as_dict() == INITIAL
    first = trainer.step()
    assert first["gnorm_sm_z_q"] == first["gnorm_sm_y_q"], "theta_z starts as theta_y (same batch, t and eps)"
    z_after_first = _flat(trainer.theta_z)
    second = trainer.step()
    third = trainer.step()
    z_now = _flat(trainer.theta_z)
    assert not torch.equal(z_now, z_after_first), "theta_z must move between bilevel steps"
    assert not torch.equal(z_now, _flat(trainer.solver.model)) and trainer.theta_distance() > 0
    assert second["gnorm_sm_z_q"] != second["gnorm_sm_y_q"]
    assert trainer.optimizer_z.state, "theta_z has its own optimiser state"
    assert trainer.schedule.as_dict() != INITIAL, "the schedule moved"
    for row in (first, second, third):
        assert {"objective_fid", "gamma", "gnorm_zo_q", "gnorm_sm_z_q", "gnorm_sm_y_q", "schedule_tau"} <= set(row)
        values = trainer.schedule.as_dict()
        assert all(lo <= values[k] <= hi for k, (lo, hi) in trainer.schedule.bounds.items())
    # per bilevel step (4 samples x 2 DDIM steps = 8 evaluations per FID): one back-propagated FID for theta_z and
    # two for q's one direction; once, F_0 for objective_scale=initial
    assert trainer.solver.step_count == 8 and trainer.backprop_nfe == 3 * 8
    assert trainer.objective_nfe == 3 * (8 + 2 * 8) + 8 and trainer.objective_ref > 0


def test_the_bilevel_state_round_trip_continues_identically(make_trainer) -> None:
    trainer = make_trainer()
    for _ in range(2):
        trainer.step()
    state = copy.deepcopy(trainer.state_dict())
    expected = [trainer.step() for _ in range(2)]
    restored = make_trainer()
    restored.load_state_dict(state)
    assert [restored.step() for _ in range(2)] == expected


@pytest.mark.slow
def test_every_search_baseline_runs_through_run_py(tmp_path, smoke_args) -> None:
    result = run_cli("-m", "task=noise_schedule_mnist", *smoke_args,
                     "upper_estimator=staged_grid,grid,random,bayesian", "++upper_estimator.n_trials=2",
                     f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=${hydra.job.num}")
    assert result.returncode == 0, result.stderr[-2000:]
    for num, method in enumerate(("staged_grid", "grid", "random", "bayesian")):
        run_dir = tmp_path / str(num)
        summary = assert_run_contract(run_dir, "noise_schedule_mnist", method)
        trials = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "trial" in r]
        assert summary["trainings_used"] == len(trials) == 2
        assert summary["selection_fid"] == min(r["selection_fid"] for r in trials) and "fid" not in trials[0]
        assert summary["objective"] == summary["fid"]  # the chosen trial on the evaluation noise
        assert summary["sampler_nfe"] == sum(r["sampler_nfe"] for r in trials) + summary["report_nfe"]
        assert (run_dir / "study.db").is_file() and (run_dir / "schedule.png").is_file()


def test_a_search_needs_the_box_of_a_learned_schedule(tmp_path) -> None:
    box = _problem(tmp_path / "learned", "schedule=learned_cosine")[0].search_space()
    assert box["tau"] == {"low": 1.0, "high": 4.0, "log": False, "initial": 1.0}
    assert set(box) == {"start", "end", "tau", "eps"}
    with pytest.raises(ConfigError, match="schedule.bounds"):
        _problem(tmp_path / "fixed", "schedule=cosine")[0].search_space()


def _kill_when(cmd: list[str], ready, timeout: float = 300) -> None:
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *cmd], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_a_killed_bayesian_study_resumes_and_finishes_its_budget_without_repeats(tmp_path, smoke_args) -> None:
    args = ["task=noise_schedule_mnist", *smoke_args, "upper_estimator=bayesian", "upper_estimator.n_trials=5",
            "upper_estimator.n_startup_trials=2", f"hydra.run.dir={tmp_path}"]
    trial_lines = lambda: [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "trial" in r]  # noqa: E731
    _kill_when(args, lambda: (tmp_path / "metrics.jsonl").exists() and len(trial_lines()) >= 3)
    assert not (tmp_path / "summary.json").exists(), "the search finished before it could be stopped"
    resumed = run_cli(*args, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    trials = trial_lines()
    assert [r["trial"] for r in trials] == [0, 1, 2, 3, 4]
    points = {(r["start"], r["end"], r["tau"], r["eps"]) for r in trials}
    assert len(points) == 5, "no trial repeated"
    assert json.loads((tmp_path / "summary.json").read_text())["trainings_used"] == 5


@pytest.mark.slow
def test_a_killed_bilevel_run_resumes_to_the_numbers_of_an_uninterrupted_run(tmp_path, smoke_args) -> None:
    args = [*TINY, "lower_solver.num_steps=16", "task.checkpoint_every=4"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run_cli(*args, f"hydra.run.dir={straight}").returncode == 0
    checkpoint = stopped / "checkpoints" / "last.pt"
    _kill_when([*args, f"hydra.run.dir={stopped}"], checkpoint.exists)
    assert not (stopped / "summary.json").exists(), "the run finished before it could be stopped"
    assert run_cli(*args, f"hydra.run.dir={stopped}", "resume=true").returncode == 0
    a, b = (json.loads((d / "summary.json").read_text()) for d in (straight, stopped))
    assert a["fid"] == b["fid"] and a["schedule"] == b["schedule"] and a["sampler_nfe"] == b["sampler_nfe"]
    strip = lambda d: [{k: v for k, v in r.items() if k != "wall_clock_s"}  # noqa: E731
                       for r in read_jsonl(d / "metrics.jsonl")]
    assert strip(straight) == strip(stopped), "no lost and no repeated step"


@pytest.mark.parametrize("family", ["learned_cosine", "learned_sigmoid"])
def test_every_corner_of_a_learned_box_is_a_valid_schedule(family: str) -> None:
    schedule = instantiate(compose(f"schedule={family}").schedule)
    assert schedule.learnable and set(schedule.bounds) == set(schedule.param_names)
    for corner in itertools.product(*(schedule.bounds[name] for name in schedule.param_names)):
        abar = type(schedule)(**dict(zip(schedule.param_names, corner))).alphas_cumprod()
        assert torch.isfinite(abar).all() and bool((abar[1:] <= abar[:-1]).all()), corner
        assert float(abar[0]) > 0.99, corner
        if dict(zip(schedule.param_names, corner))["end"] == 1.0:  # end < 1 stops short of noise: f(t')/f(start)
            assert float(abar[-1]) < 1e-6, corner


def test_searches_select_on_their_own_noise_and_report_the_chosen_trial_on_the_evaluation_noise(tmp_path,
                                                                                              monkeypatch) -> None:
    """No trial ever samples the evaluation noise; the reported FID is the chosen trial's model on it."""
    from bilevel_diffusion.problems import schedule as schedule_module
    from bilevel_diffusion.upper_estimators.random import RandomSearch

    problem, cfg, ctx = _problem(tmp_path)
    seeds: list[int] = []
    real_noise = schedule_module.fixed_noise
    monkeypatch.setattr(schedule_module, "fixed_noise", lambda n, seed, *a: seeds.append(seed) or real_noise(n, seed, *a))
    found = RandomSearch(n_trials=2, seed=0).search(problem.search_space(), problem.trial, ctx)
    assert seeds and cfg.eval.seed not in seeds, "a trial sampled the evaluation noise"
    assert all(t.result["objective"] == t.result["selection_fid"] for t in found.trials)
    summary = problem.report_search(found)
    chosen = problem.with_params(found.best_params)
    retrained = problem.train(chosen).ema_model()
    again = problem.report(retrained, chosen, None)
    assert summary["fid"] == pytest.approx(again["fid"], rel=1e-6) and summary["objective"] == summary["fid"]
    assert summary["selection_fid"] == found.best_value != summary["fid"]
    assert summary["sampler_nfe"] == sum(t.result["sampler_nfe"] for t in found.trials) + again["sampler_nfe"]
    assert summary["alphas_cumprod_T"] <= 1e-4 and summary["schedule_normalisation"] == "chen"
    # the chosen network and its schedule load with diffusers alone
    from diffusers import DDIMPipeline

    pipe = DDIMPipeline.from_pretrained(tmp_path / "diffusers")
    assert torch.allclose(pipe.scheduler.betas.double(), chosen.betas().detach(), atol=1e-7)
    assert all(torch.equal(a, b) for a, b in zip(pipe.unet.state_dict().values(),
                                                 retrained.unet.state_dict().values()))
    images = pipe(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (2, 28, 28, 1)


def test_the_q_gradient_snr_probe_logs_without_changing_the_run(tmp_path) -> None:
    """snr_repeats > 0 logs q_grad_snr (and every bilevel step logs the ratio of the two q-gradient parts) while
    the run's numbers stay those of a run without the probe."""
    def run(*overrides: str) -> tuple[list[dict], PenaltyLoop]:
        problem, cfg, ctx = _problem(tmp_path / "_".join(overrides or ("plain",)), *overrides)
        loop = PenaltyLoop(instantiate(cfg.upper_estimator), problem, ctx)
        return [loop.step() for _ in range(3)], loop

    plain, plain_loop = run()
    probed, probed_loop = run("upper_estimator.snr_repeats=3")
    bilevel = [row for row in probed if "objective_fid" in row]
    assert bilevel and all(row["q_grad_snr"] >= 0 and row["term_ratio_q"] > 0 for row in bilevel[1:])
    assert "q_grad_snr" not in plain[-1] and "term_ratio_q" in plain[-1] and "term_ratio_q" not in bilevel[0]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("q_grad_snr", "objective_nfe")} for r in rows]  # noqa: E731
    assert strip(plain) == strip(probed), "the probe must not move the run"
    assert probed_loop.objective_nfe > plain_loop.objective_nfe, "and its cost is counted"
    # with two or more directions the step's own directions give it, at no extra evaluation
    free, free_loop = run("upper_estimator.num_directions=2")
    assert all(row["q_grad_snr"] >= 0 for row in free if "objective_fid" in row)
    per_step = 4 * 2  # 4 samples x 2 DDIM steps
    assert free_loop.objective_nfe == plain_loop.objective_nfe + 2 * 2 * per_step  # 2 bilevel steps, 1 more direction
