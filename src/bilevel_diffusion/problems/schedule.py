"""The Scenario B problem (paper Sec. 3.2, ``docs/method.md``): train an eps-model from scratch under a noise
schedule q and judge the schedule by the FID of the trained model's samples.

    upper:  min_q  FID(samples of theta*(q) under q)          lower:  theta*(q) = argmin_theta L_SM(theta; q)

A task fills a :class:`ScheduleProblem` with the data, a model factory, the schedule (its family, initial value and
box), the score-matching solver factory and the reported-FID evaluator; upper estimators use

- :meth:`new_solver`, :meth:`next_batch`, :meth:`lower_loss`, :meth:`in_loop_fid` (and its differentiable form
  :meth:`in_loop_fid_differentiable`): the pieces of the bilevel loop (paper Alg. 6: the estimator owns the loop);
- :meth:`train`: one full training under a fixed schedule (paper Alg. 3, the project's one training loop);
- :meth:`search_space` / :meth:`trial` / :meth:`report_search`: one training per schedule (the searches). A trial
  is ranked by its *selection* FID, on noise disjoint from the evaluation noise (seed ``eval.seed +``
  :data:`SELECTION_SEED_OFFSET`); only the chosen trial is evaluated on the evaluation noise, so the reported FID
  is not the minimum of many noisy FIDs (no winner's curse, ``docs/method.md``); :meth:`report_trial` measures a
  trial on the evaluation noise for the anytime curves, after it was ranked, and nothing selects on it;
- :meth:`report`: the *reported* FID/IS of a trained model (``eval.num_samples`` DDIM samples from fixed noise),
  the same for every method; never the cheap in-loop FID.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers import DDIMScheduler
from torch import nn

from bilevel_diffusion import distributed
from bilevel_diffusion.data.mnist import ImageData
from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.evaluation import fixed_noise, report_samples, save_samples
from bilevel_diffusion.exporting import export_diffusers
from bilevel_diffusion.lower_solvers.score_matching import ScoreMatchingSolver, fit, score_matching_loss
from bilevel_diffusion.metrics.image_quality import ImageQuality
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.sampling.ddim import DETACH_X0_BELOW, ddim_differentiable, ddim_sample, make_ddim_scheduler
from bilevel_diffusion.schedules.family import NoiseSchedule


#: the selection noise of search trials is ``fixed_noise(eval.num_samples, eval.seed + SELECTION_SEED_OFFSET)``
SELECTION_SEED_OFFSET = 1_000_003


def _end_point(schedule: NoiseSchedule) -> dict[str, Any]:
    """``alphas_cumprod_T`` (how close the schedule's last timestep is to pure noise) and its normalisation."""
    with torch.no_grad():
        end = float(schedule.alphas_cumprod()[-1])
    return {"alphas_cumprod_T": end, **{f"schedule_{k}": v for k, v in schedule.options().items()}}


def _trial_grid_name(params: Mapping[str, float]) -> str:
    digest = hashlib.sha1(json.dumps(dict(params), sort_keys=True).encode()).hexdigest()[:10]
    return f"trial_samples/{digest}"


class ScheduleProblem:
    """A Scenario B instance: what training, sampling and scoring a model under a schedule needs.

    ``model()`` builds a fresh eps-network (seeded with the run's seed by :meth:`new_solver`, so every training of
    a run starts from the same weights); ``lower_solver(model=...)`` its score-matching solver. ``evaluation``
    holds ``num_samples``, ``num_inference_steps``, ``batch_size``, ``seed`` and ``grid_size`` of the reported
    evaluation; ``sampler`` the DDIM settings ``clip_sample`` and ``timestep_spacing``.
    """

    def __init__(self, *, name: str, data: ImageData, model: Callable[[], nn.Module], schedule: NoiseSchedule,
                 lower_solver: Callable[..., ScoreMatchingSolver], quality: ImageQuality,
                 evaluation: Mapping[str, Any], sampler: Mapping[str, Any], ctx: RunContext, log_every: int = 25,
                 checkpoint_every: int = 100) -> None:
        self.name, self.data, self.model, self.schedule = name, data, model, schedule
        self.lower_solver, self.quality, self.evaluation, self.ctx = lower_solver, quality, evaluation, ctx
        self.clip_sample, self.timestep_spacing = bool(sampler["clip_sample"]), str(sampler["timestep_spacing"])
        self.log_every, self.checkpoint_every = int(log_every), int(checkpoint_every)
        self._best_trial: tuple[float, dict[str, float], dict[str, torch.Tensor]] | None = None
        self._last_trial: tuple[dict[str, float], nn.Module] | None = None

    # -- the lower level --------------------------------------------------------------------------------------
    def new_solver(self) -> ScoreMatchingSolver:
        """A score-matching solver on a fresh network with the run seed's initial weights."""
        torch.manual_seed(self.ctx.seed)
        return self.lower_solver(model=self.model().to(self.ctx.device))

    def next_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """A training batch of images (CPU), drawn with ``generator``."""
        return self.data.batch(batch_size, generator)[0]

    def lower_loss(self, model: nn.Module, alphas_cumprod: torch.Tensor, x0: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
        """L_SM(model; q) with its graph to q; with ``hardware=ddp`` this rank's share of the batch loss."""
        model.train()
        return score_matching_loss(model, alphas_cumprod, x0, generator, data_parallel=True)

    def train(self, schedule: NoiseSchedule, checkpointed: bool = False,
              desc: str = "score matching") -> ScoreMatchingSolver:
        """One full training under the fixed ``schedule`` (paper Alg. 3). ``checkpointed``: log the loss every
        ``log_every`` steps, save ``checkpoints/last.pt`` every ``checkpoint_every`` steps and resume from it."""
        solver = self.new_solver()
        generator = torch.Generator().manual_seed(self.ctx.seed)
        ctx = self.ctx
        return fit(solver, self.next_batch, schedule.alphas_cumprod(), generator, ctx.device, ctx.recorder,
                   self.log_every if checkpointed else 0, ctx.checkpoint_path if checkpointed else None,
                   self.checkpoint_every, ctx.resume, desc)

    # -- the upper level --------------------------------------------------------------------------------------
    def in_loop_fid(self, model: nn.Module, schedule: NoiseSchedule, num_samples: int, seed: int,
                    num_inference_steps: int, batch_size: int) -> tuple[float, int]:
        """The cheap in-loop objective: FID of ``num_samples`` DDIM samples from noise seeded by ``seed``, and
        the network evaluations it cost. Never reported as the run's FID."""
        images, nfe = self._sample(model, schedule, num_samples, seed, num_inference_steps, batch_size)
        return self.quality.fid_score(images), nfe

    def in_loop_fid_differentiable(self, model: nn.Module, schedule: NoiseSchedule, num_samples: int, seed: int,
                                   num_inference_steps: int,
                                   detach_x0_below: float = DETACH_X0_BELOW) -> tuple[torch.Tensor, int]:
        """The same in-loop FID as :meth:`in_loop_fid` (same noise, sampler and features) as a torch scalar with
        a graph to ``model``'s weights (:func:`~bilevel_diffusion.sampling.ddim.ddim_differentiable`, then the
        differentiable FID; ``docs/method.md``, the first-order theta_z gradient); and the network evaluations."""
        noise = fixed_noise(num_samples, seed, self.data.sample_shape).to(self.ctx.device)
        model.eval()
        samples = ddim_differentiable(model, self._scheduler(schedule), noise, num_inference_steps,
                                      detach_x0_below).clamp(-1, 1)
        return self.quality.differentiable_fid(samples), num_samples * num_inference_steps

    def _sample(self, model: nn.Module, schedule: NoiseSchedule, num_samples: int, seed: int,
                num_inference_steps: int, batch_size: int) -> tuple[torch.Tensor, int]:
        """DDIM samples of ``model`` under ``schedule`` from the noise of ``seed``, and their network evaluations."""
        return ddim_sample(model, self._scheduler(schedule), fixed_noise(num_samples, seed, self.data.sample_shape),
                           num_inference_steps, batch_size, self.ctx.device)

    def _scheduler(self, schedule: NoiseSchedule) -> DDIMScheduler:
        """The DDIM scheduler of ``schedule`` with the problem's sampler settings."""
        return make_ddim_scheduler(schedule.betas().detach(), clip_sample=self.clip_sample,
                                   timestep_spacing=self.timestep_spacing)

    def report(self, model: nn.Module, schedule: NoiseSchedule, step: int | None,
               grid_name: str = "samples") -> dict[str, Any]:
        """The reported FID/KID/IS of ``model`` sampled under ``schedule``, logged at ``step`` (None: not logged);
        the model and schedule are exported to ``<run dir>/diffusers`` (:mod:`bilevel_diffusion.exporting`)."""
        sample_report = report_samples(model, schedule.betas(), self.quality, self.evaluation, self.ctx,
                                       self.clip_sample, self.timestep_spacing, grid_name=grid_name,
                                       sample_shape=self.data.sample_shape)
        if distributed.is_main():  # the reported network and its schedule, loadable with diffusers alone
            export_diffusers(model, schedule.betas(), self.ctx.run_dir / "diffusers", self.clip_sample,
                             self.timestep_spacing)
        if step is not None:
            self.ctx.recorder.log(step, fid=sample_report.fid, kid=sample_report.kid,
                                  inception_score=sample_report.inception_score)
        return {"objective": sample_report.fid, "fid": sample_report.fid, "kid": sample_report.kid,
                "is": sample_report.inception_score,
                "is_std": sample_report.inception_score_std, "sampler_nfe": sample_report.sampler_nfe,
                "sampler_cost": sample_report.sampler_nfe,  # unguided DDIM: one forward pass per network evaluation
                "report_nfe": sample_report.sampler_nfe,  # of which this reported evaluation (not the method's cost)
                "fid_features": self.quality.label, "eval_num_samples": self.evaluation["num_samples"],
                "schedule": {"name": schedule.name, **schedule.as_dict()}, **_end_point(schedule)}

    # -- the search interface ---------------------------------------------------------------------------------
    def with_params(self, params: Mapping[str, float]) -> NoiseSchedule:
        """A fixed (non-learnable) schedule of the problem's family with ``params``."""
        return self.schedule.with_values(**params)

    def search_space(self) -> dict[str, dict[str, Any]]:
        """The schedule's box, uniform in every parameter (as the official Bayesian optimisation), with the
        configured values as ``initial`` (where a staged grid holds a parameter before its stage)."""
        schedule = self.schedule
        missing = [name for name in schedule.param_names if name not in schedule.bounds]
        if missing:
            raise ConfigError(f"the search baselines search the box schedule.bounds; it lacks {missing} "
                              f"(use schedule=learned_cosine or schedule=learned_sigmoid)")
        initial = schedule.as_dict()
        return {name: {"low": lo, "high": hi, "log": False, "initial": initial[name]}
                for name, (lo, hi) in schedule.bounds.items()}

    def trial(self, params: Mapping[str, float]) -> dict[str, Any]:
        """One trial: a full training under the fixed schedule ``params``, ranked by its selection FID (DDIM
        samples as in the reported evaluation, from the selection noise); its grid is
        ``trial_samples/<hash>.png``. The best trial's weights are kept in memory for :meth:`report_search`."""
        (self.ctx.run_dir / "trial_samples").mkdir(exist_ok=True)
        schedule = self.with_params(params)
        solver = self.train(schedule, desc="trial: score matching")
        model, ev = solver.ema_model(), self.evaluation
        images, nfe = self._sample(model, schedule, int(ev["num_samples"]), int(ev["seed"]) + SELECTION_SEED_OFFSET,
                                   int(ev["num_inference_steps"]), int(ev["batch_size"]))
        save_samples(self.ctx.recorder, _trial_grid_name(params), images[:int(ev["grid_size"])])
        fid = self.quality.fid_score(images)
        if self._best_trial is None or fid < self._best_trial[0]:
            self._best_trial = (fid, dict(params), {k: v.detach().clone() for k, v in model.state_dict().items()})
        self._last_trial = (dict(params), model)
        return {"objective": fid, "selection_fid": fid, "selection_kid": self.quality.kid_score(images),
                "sampler_nfe": nfe, "sampler_cost": nfe, "train_steps": solver.num_steps}

    def report_trial(self, params: Mapping[str, float]) -> dict[str, Any]:
        """The trial just run (at ``params``) on the evaluation noise: its reported FID and KID, for the anytime
        curves (``docs/results.md``); its cost is a measurement, not the search's."""
        if self._last_trial is None or self._last_trial[0] != dict(params):
            raise RuntimeError("report_trial(params) measures the trial just run at params")
        ev = self.evaluation
        images, _ = self._sample(self._last_trial[1], self.with_params(params), int(ev["num_samples"]),
                                 int(ev["seed"]), int(ev["num_inference_steps"]), int(ev["batch_size"]))
        fid = self.quality.fid_score(images)
        return {"objective": fid, "fid": fid, "kid": self.quality.kid_score(images)}

    def _trained(self, params: Mapping[str, float]) -> nn.Module:
        """The chosen trial's EMA network: kept from its trial, or trained again (the same seed gives the same
        weights) when the trial ran before a resume."""
        if self._best_trial is not None and self._best_trial[1] == dict(params):
            model = self.new_solver().ema_model()
            model.load_state_dict(self._best_trial[2])
            return model
        print("the chosen trial ran before the resume: training it again for the reported evaluation",
              file=sys.stderr)
        return self.train(self.with_params(params), desc="chosen trial: score matching").ema_model()

    def report_search(self, found: Any) -> dict[str, Any]:
        """The chosen trial (lowest selection FID) evaluated on the evaluation noise: the reported FID/KID/IS and
        ``samples.png``. The cost counts the trials' selection samples and this one evaluation."""
        ctx, best_index = self.ctx, next(t.index for t in found.trials if t.result is found.best_result)
        result = self.report(self._trained(found.best_params), self.with_params(found.best_params), None)
        ctx.recorder.log(len(found.trials), fid=result["fid"], kid=result["kid"], inception_score=result["is"],
                         best_trial=best_index, selection_fid=found.best_value)
        nfe = found.sampler_nfe + result["sampler_nfe"]
        return {**result, "objective": result["fid"], "selection_fid": found.best_value, "best_trial": best_index,
                "sampler_nfe": nfe, "sampler_cost": nfe, "report_nfe": result["sampler_nfe"],
                "schedule": {"name": self.schedule.name, **found.best_params}, "trainings_used": len(found.trials),
                "train_steps": sum(int(t.result.get("train_steps", 0)) for t in found.trials)}
