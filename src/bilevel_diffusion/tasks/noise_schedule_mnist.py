"""``task=noise_schedule_mnist``: Scenario B (paper Sec. 3.2, SPEC §1.2), learn the noise schedule of an MNIST
diffusion model trained from scratch.

``upper_estimator`` chooses the method:

- ``zeroth_order``: the paper's penalty method (Alg. 6), one training run that moves the schedule as it goes; the
  reported model is theta_y's EMA (the network trained under the learned schedule) sampled under the final schedule;
- ``staged_grid`` / ``grid`` / ``random`` / ``bayesian``: search baselines, each trial a full training run under a
  fixed schedule from the same family and box (``schedule.bounds``), judged by the reported FID;
- ``fixed``: one training run under the configured schedule.

Every method is judged by the same *reported* FID/IS (``eval.num_samples`` DDIM samples from fixed noise).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.evaluation import build_image_quality, report_samples
from bilevel_diffusion.metrics.image_quality import ImageQuality
from bilevel_diffusion.reporting.figures import plot_schedules
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.schedules.family import CosineSchedule, NoiseSchedule
from bilevel_diffusion.tasks.fixed_schedule import report_result, train_score_model
from bilevel_diffusion.tasks.schedule_bilevel import ScheduleBilevel
from bilevel_diffusion.upper_estimators.search import SearchEstimator
from bilevel_diffusion.upper_estimators.zeroth_order import ZerothOrderEstimator


def search_space(schedule: NoiseSchedule) -> dict[str, dict[str, Any]]:
    """The search baselines' space: the schedule's box, uniform in every parameter (as the official BO), with the
    configured values as ``initial`` (where a staged grid holds a parameter before its stage)."""
    missing = [name for name in schedule.param_names if name not in schedule.bounds]
    if missing:
        raise ConfigError(f"the search baselines search the box schedule.bounds; it lacks {missing} "
                          f"(use schedule=learned_cosine or schedule=learned_sigmoid)")
    initial = schedule.as_dict()
    return {name: {"low": lo, "high": hi, "log": False, "initial": initial[name]}
            for name, (lo, hi) in schedule.bounds.items()}


def with_params(schedule: NoiseSchedule, params: dict[str, float]) -> NoiseSchedule:
    """A fixed (non-learnable) schedule of the same family with ``params``."""
    return type(schedule)(name=schedule.name, num_train_timesteps=schedule.num_train_timesteps, **params)


def _trial_grid_name(params: dict[str, float]) -> str:
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return f"trial_samples/{digest}"


class NoiseScheduleMNIST:
    """Dispatches to the bilevel loop, a search or one fixed run; writes the schedule figure."""

    def __init__(self, name: str = "noise_schedule_mnist", log_every: int = 25, checkpoint_every: int = 100) -> None:
        self.name, self.log_every, self.checkpoint_every = name, log_every, checkpoint_every

    def run(self, cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
        estimator = instantiate(cfg.upper_estimator)
        schedule = instantiate(cfg.schedule)
        if isinstance(estimator, SearchEstimator):
            space = search_space(schedule)
        elif not (isinstance(estimator, ZerothOrderEstimator) or cfg.upper_estimator.name == "fixed"):
            raise ConfigError(f"task=noise_schedule_mnist runs upper_estimator=zeroth_order, staged_grid, grid, "
                              f"random, bayesian or fixed (got {cfg.upper_estimator.name!r})")
        initial = with_params(schedule, schedule.as_dict())
        data = instantiate(cfg.data)
        quality = build_image_quality(cfg, data.test_x, ctx)
        if isinstance(estimator, ZerothOrderEstimator):
            result = self._bilevel(cfg, ctx, estimator, schedule, data, quality)
        elif isinstance(estimator, SearchEstimator):
            result = self._search(cfg, ctx, estimator, space, schedule, data, quality)
        else:
            result = self._fixed(cfg, ctx, schedule, data, quality)
        final = with_params(schedule, {k: v for k, v in result["schedule"].items() if k != "name"})
        curves = {f"{cfg.upper_estimator.name}: final": final, "initial": initial,
                  "standard cosine": CosineSchedule(start=0.0, end=1.0, tau=1.0, eps=0.008)}
        figure = plot_schedules(curves, ctx.run_dir / "schedule.png",
                                title=f"{schedule.name}, {cfg.upper_estimator.name}")
        ctx.recorder.log_file_image("schedule", figure)
        return {**result, "initial_schedule": initial.as_dict()}

    def _bilevel(self, cfg: DictConfig, ctx: RunContext, estimator: ZerothOrderEstimator, schedule: NoiseSchedule,
                 data, quality: ImageQuality) -> dict[str, Any]:
        trainer = ScheduleBilevel(cfg, estimator, schedule, data, quality, ctx)
        trainer.fit(self.checkpoint_every)
        report = report_samples(trainer.solver.ema_model(), schedule.betas(), quality, cfg.eval, ctx, cfg.sampler)
        ctx.recorder.log(trainer.solver.num_steps, fid=report.fid, inception_score=report.inception_score)
        return {**report_result(report, quality, cfg.eval, schedule),
                "sampler_nfe": report.sampler_nfe + trainer.objective_nfe, "objective_nfe": trainer.objective_nfe,
                "report_nfe": report.sampler_nfe, "trainings_used": 1, "train_steps": trainer.solver.num_steps,
                "train_steps_z": trainer.bilevel_outer, "theta_z_minus_theta_y": trainer.theta_distance()}

    def _search(self, cfg: DictConfig, ctx: RunContext, estimator: SearchEstimator, space: dict[str, Any],
                schedule: NoiseSchedule, data, quality: ImageQuality) -> dict[str, Any]:
        (ctx.run_dir / "trial_samples").mkdir(exist_ok=True)

        def evaluate(params: dict[str, float]) -> dict[str, Any]:
            """One trial: a full training run under the fixed schedule ``params``, then the reported FID/IS."""
            trial = with_params(schedule, params)
            solver = train_score_model(cfg, ctx, data, trial.alphas_cumprod(), desc="trial: score matching")
            report = report_samples(solver.ema_model(), trial.betas(), quality, cfg.eval, ctx, cfg.sampler,
                                    grid_name=_trial_grid_name(params))
            return {"objective": report.fid, "fid": report.fid, "is": report.inception_score,
                    "is_std": report.inception_score_std, "sampler_nfe": report.sampler_nfe}

        result = estimator.search(space, evaluate, ctx)
        best = result.best_result
        trials_dir = ctx.shared_dir or ctx.run_dir  # rank 0's, which holds every trial's grid also after a resume
        shutil.copyfile(trials_dir / f"{_trial_grid_name(result.best_params)}.png", ctx.run_dir / "samples.png")
        ctx.recorder.log(len(result.trials), fid=best["fid"], inception_score=best["is"],
                         best_trial=next(t.index for t in result.trials if t.result is best))
        return {"objective": result.best_value, "fid": best["fid"], "is": best["is"], "is_std": best["is_std"],
                "sampler_nfe": result.sampler_nfe, "fid_features": quality.label,
                "eval_num_samples": cfg.eval.num_samples, "schedule": {"name": schedule.name, **result.best_params},
                "trainings_used": len(result.trials), "train_steps": cfg.lower_solver.num_steps * len(result.trials)}

    def _fixed(self, cfg: DictConfig, ctx: RunContext, schedule: NoiseSchedule, data,
               quality: ImageQuality) -> dict[str, Any]:
        solver = train_score_model(cfg, ctx, data, schedule.alphas_cumprod(), self.log_every, self.checkpoint_every,
                                   ctx.checkpoint_path)
        report = report_samples(solver.ema_model(), schedule.betas(), quality, cfg.eval, ctx, cfg.sampler)
        ctx.recorder.log(solver.num_steps, fid=report.fid, inception_score=report.inception_score)
        return {**report_result(report, quality, cfg.eval, schedule), "trainings_used": 1,
                "train_steps": solver.num_steps}
