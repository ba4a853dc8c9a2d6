"""Paper Alg. 6 (bilevel without a pre-trained model) on an eps-model: learn the noise schedule while training.

Variables (SPEC §1.2): ``theta_y`` solves the plain lower problem (K score-matching steps per outer step, the
foundation's :class:`ScoreMatchingSolver` with its EMA); ``theta_z`` is a *persistent* penalised copy with its own
AdamW (copied from ``theta_y`` once, when warm-up ends; the official code never actually updated it); ``q`` are
the schedule parameters, moved by :class:`BoxAdam` and projected into their box after every step.

The upper objective inside the loop is a *cheap* FID: ``n_obj`` DDIM samples of ``theta_z`` with
``obj_inference_steps`` steps from noise seeded per zeroth-order direction (common random numbers for the +delta
and -delta evaluations). It is logged as ``objective_fid`` and never reported as the FID of the run.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm.auto import tqdm

from bilevel_diffusion.checkpoint import load_checkpoint, save_checkpoint
from bilevel_diffusion.data.mnist import ImageData
from bilevel_diffusion.errors import ConfigError, NumericalFault, nonfinite
from bilevel_diffusion.evaluation import fixed_noise
from bilevel_diffusion.lower_solvers.score_matching import score_matching_loss
from bilevel_diffusion.metrics.image_quality import ImageQuality
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.sampling.ddim import ddim_sample, make_ddim_scheduler
from bilevel_diffusion.schedules.family import NoiseSchedule
from bilevel_diffusion.upper_estimators.box_adam import BoxAdam
from bilevel_diffusion.upper_estimators.zeroth_order import ZerothOrderEstimator, penalty_gradients


class ScheduleBilevel:
    """The state of paper Alg. 6 and one outer step of it (:meth:`step`); :meth:`fit` runs all of them."""

    def __init__(self, cfg: DictConfig, estimator: ZerothOrderEstimator, schedule: NoiseSchedule, data: ImageData,
                 quality: ImageQuality, ctx: RunContext) -> None:
        if not schedule.learnable:
            raise ConfigError(f"upper_estimator=zeroth_order learns the schedule: use schedule=learned_cosine or "
                              f"schedule=learned_sigmoid (got the fixed schedule {schedule.name!r})")
        self.cfg, self.estimator, self.schedule, self.data, self.quality, self.ctx = (
            cfg, estimator, schedule, data, quality, ctx)
        torch.manual_seed(ctx.seed)  # the same initial weights as a fixed-schedule run with this seed
        model = instantiate(cfg.model).to(ctx.device)
        self.solver = instantiate(cfg.lower_solver, model=model)
        self.warmup_outer, self.bilevel_outer = estimator.outer_steps(self.solver.num_steps)
        self.theta_z = copy.deepcopy(model)
        self.optimizer_z = torch.optim.AdamW(self.theta_z.parameters(), lr=estimator.lr_z,
                                             weight_decay=cfg.lower_solver.weight_decay)
        self.lr_scheduler_z = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer_z, T_max=self.bilevel_outer)
        self.upper = BoxAdam(schedule, estimator.schedule_lr, self.bilevel_outer)
        self.generator = torch.Generator().manual_seed(ctx.seed)
        self.outer_step = 0
        self.objective_nfe = 0

    @property
    def total_outer(self) -> int:
        return self.warmup_outer + self.bilevel_outer

    def _batch(self) -> torch.Tensor:
        return self.data.batch(self.solver.batch_size, self.generator)[0].to(self.ctx.device)

    def objective(self, seed: int) -> float:
        """Cheap in-loop FID of ``theta_z`` under the current schedule, from noise drawn with ``seed``."""
        scheduler = make_ddim_scheduler(self.schedule.betas().detach(), clip_sample=self.cfg.sampler.clip_sample,
                                        timestep_spacing=self.cfg.sampler.timestep_spacing)
        images, nfe = ddim_sample(self.theta_z, scheduler, fixed_noise(self.estimator.n_obj, seed),
                                  self.estimator.obj_inference_steps, self.estimator.obj_batch_size, self.ctx.device)
        self.objective_nfe += nfe
        return self.quality.fid_score(images)

    def _lower_loss(self, model: torch.nn.Module, x0: torch.Tensor, noise_seed: int) -> Callable[[], torch.Tensor]:
        """L_SM(model; q) with a graph to q; both copies get the same batch, t and eps (common random numbers).
        With ``hardware=ddp``: this rank's share of it (``penalty_gradients`` sums the ranks' gradients)."""
        def loss() -> torch.Tensor:
            model.train()
            generator = torch.Generator().manual_seed(noise_seed)
            return score_matching_loss(model, self.schedule.alphas_cumprod(), x0, generator, data_parallel=True)
        return loss

    def step(self) -> dict[str, float]:
        """One outer step: K theta_y steps; after warm-up, one theta_z step and one projected schedule step."""
        alphas_cumprod = self.schedule.alphas_cumprod().detach()
        k = min(self.estimator.inner_steps, self.solver.num_steps - self.solver.step_count)
        losses = [self.solver.step(self._batch(), alphas_cumprod, self.generator) for _ in range(k)]
        row = {"loss_y": sum(losses) / k, "lr": self.solver.optimizer.param_groups[0]["lr"]}
        if self.outer_step >= self.warmup_outer:
            row.update(self._penalty_step(self.outer_step - self.warmup_outer))
        self.outer_step += 1
        row.update({f"schedule_{name}": value for name, value in self.schedule.as_dict().items()})
        return row

    def _penalty_step(self, bilevel_step: int) -> dict[str, float]:
        if bilevel_step == 0:  # theta_z starts where theta_y is when the schedule starts to move
            self.theta_z.load_state_dict(self.solver.model.state_dict())
        gamma = self.estimator.gamma(bilevel_step, self.bilevel_outer)
        x0 = self._batch()
        noise_seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        params_z = list(self.theta_z.parameters())
        grads = penalty_gradients(self.schedule.raw, params_z, self._lower_loss(self.theta_z, x0, noise_seed),
                                  self._lower_loss(self.solver.model, x0, noise_seed), self.objective, gamma,
                                  self.estimator.delta, self.estimator.delta_z, self.estimator.num_directions,
                                  self.generator, upper_scale=self.upper.width)
        where = f"outer step {self.outer_step + 1} (theta_y step {self.solver.step_count})"
        for quantity, tensors in (("schedule hyper-gradient", [grads.upper]), ("theta_z gradient", grads.penalised)):
            if not all(bool(torch.isfinite(t).all()) for t in tensors):
                nonfinite(self.estimator.on_nonfinite, quantity, where, "upper_estimator.on_nonfinite")
                return {"objective_fid": grads.objective, "gamma": gamma, "nonfinite_skipped": 1}
        for p, g in zip(params_z, grads.penalised):
            p.grad = g
        if self.cfg.lower_solver.grad_clip:
            torch.nn.utils.clip_grad_norm_(params_z, self.cfg.lower_solver.grad_clip)
        self.optimizer_z.step()
        self.optimizer_z.zero_grad(set_to_none=True)
        self.lr_scheduler_z.step()
        self.upper.step(grads.upper)
        if not bool(torch.isfinite(self.schedule.raw).all()):
            raise NumericalFault(f"non-finite schedule parameters at {where}; the last good checkpoint is kept")
        return {"objective_fid": grads.objective, "loss_z": grads.lower_penalised, "gamma": gamma,
                "zo_skipped": grads.skipped_directions, "objective_nfe": self.objective_nfe, **grads.norms}

    def theta_distance(self) -> float:
        """||theta_z - theta_y||_2: zero would mean the penalised copy never moved apart (the official bug)."""
        return float(sum((z.detach() - y.detach()).double().pow(2).sum()
                         for z, y in zip(self.theta_z.parameters(), self.solver.model.parameters())) ** 0.5)

    def state_dict(self) -> dict:
        return {"solver": self.solver.state_dict(), "theta_z": self.theta_z.state_dict(),
                "optimizer_z": self.optimizer_z.state_dict(), "lr_scheduler_z": self.lr_scheduler_z.state_dict(),
                "schedule": self.schedule.state_dict(), "upper": self.upper.state_dict(),
                "generator": self.generator.get_state(), "outer_step": self.outer_step,
                "objective_nfe": self.objective_nfe}

    def load_state_dict(self, state: dict) -> None:
        self.solver.load_state_dict(state["solver"])
        self.theta_z.load_state_dict(state["theta_z"])
        self.optimizer_z.load_state_dict(state["optimizer_z"])
        self.lr_scheduler_z.load_state_dict(state["lr_scheduler_z"])
        self.schedule.load_state_dict(state["schedule"])
        self.upper.load_state_dict(state["upper"])
        self.generator.set_state(state["generator"])
        self.outer_step, self.objective_nfe = state["outer_step"], state["objective_nfe"]

    def fit(self, checkpoint_every: int) -> None:
        """All outer steps, one ``metrics.jsonl`` line each (``step`` = theta_y steps done); a checkpoint whenever
        the theta_y step count passes a multiple of ``checkpoint_every``, and at the end."""
        ctx = self.ctx
        if ctx.resume and ctx.checkpoint_path.exists():
            state = load_checkpoint(ctx.checkpoint_path)
            self.load_state_dict(state)
            ctx.recorder.resume_from(self.solver.step_count, state["wall_clock_s"])
        bar = tqdm(range(self.outer_step, self.total_outer), initial=self.outer_step, total=self.total_outer,
                   desc="bilevel (Alg. 6)", disable=None)
        for _ in bar:
            before = self.solver.step_count
            row = self.step()
            done = self.solver.step_count
            ctx.recorder.log(done, **row)
            bar.set_postfix(loss_y=f"{row['loss_y']:.4f}", obj=f"{row.get('objective_fid', float('nan')):.2f}")
            if done // checkpoint_every > before // checkpoint_every or self.outer_step == self.total_outer:
                save_checkpoint({**self.state_dict(), "wall_clock_s": ctx.recorder.wall_clock()},
                                ctx.checkpoint_path)
