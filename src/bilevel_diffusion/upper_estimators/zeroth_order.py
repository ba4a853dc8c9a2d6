"""``upper_estimator=zeroth_order``: paper Alg. 6 (bilevel without a pre-trained model) in full, on a
:class:`~bilevel_diffusion.problems.schedule.ScheduleProblem`: learn the noise schedule while training.

Variables (``docs/method.md``, Scenario B): ``theta_y`` solves the plain lower problem (K score-matching steps per
outer step, with its EMA); ``theta_z`` is a *persistent* penalised copy with its own AdamW (copied from ``theta_y``
once, when warm-up ends; the official code never actually updated it); ``q`` are the schedule parameters, moved by
:class:`BoxAdam` and projected into their box after every step. The gradients are
:func:`~bilevel_diffusion.upper_estimators.penalty.penalty_gradients`.

The upper objective inside the loop is a *cheap* FID: ``n_obj`` DDIM samples of ``theta_z`` with
``obj_inference_steps`` steps from noise seeded per zeroth-order direction (common random numbers for the +delta
and -delta evaluations). It is logged as ``objective_fid`` and never reported as the FID of the run. With
``objective_scale: initial`` the loop uses F / F_0 (F_0 = the in-loop FID when the schedule starts to move, logged
as ``objective_ref``), so that gamma and the step sizes mean the same whatever the FID's units.

theta_z's F-gradient (``theta_z_gradient``): ``backprop`` (default) differentiates the in-loop FID through the
DDIM chain and the feature network (first order, no noise from random directions; steps with alpha-bar below
``detach_x0_below`` pass no gradient through their x0 estimate, 0 disables the cut); ``zeroth_order`` is the
official two-point estimate over all weights with one direction, whose cosine with the true gradient is ~1/sqrt(d)
(``docs/method.md`` has the measurements).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from bilevel_diffusion import stopping
from bilevel_diffusion.checkpoint import load_checkpoint, save_checkpoint
from bilevel_diffusion.errors import ConfigError, NumericalFault, check_policy, nonfinite
from bilevel_diffusion.problems.schedule import ScheduleProblem
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.sampling.ddim import DETACH_X0_BELOW
from bilevel_diffusion.schedules.family import NoiseSchedule
from bilevel_diffusion.upper_estimators.base import UpperEstimator
from bilevel_diffusion.upper_estimators.penalty import (GradientEstimate, PenaltyGradients, backprop_gradient,
                                                       penalty_gradients, two_point_gradient)


class ZerothOrderEstimator(UpperEstimator):
    """Settings of paper Alg. 6 (``configs/upper_estimator/zeroth_order.yaml``), checked on construction.

    The theta_y step budget is ``lower_solver.num_steps`` (as for a fixed-schedule run). One outer step is
    ``inner_steps`` theta_y steps (the last one takes what is left); after the first ``warmup_fraction`` of the
    outer steps (schedule frozen) each outer step also takes one theta_z step and one schedule step. gamma grows
    linearly from ``gamma`` to ``gamma_end`` over the bilevel outer steps (``gamma_end: null`` keeps it constant).
    ``on_nonfinite``: a NaN/Inf schedule hyper-gradient or theta_z gradient stops the run (``stop``) or skips that
    outer step's theta_z and schedule update (``skip``).
    """

    problem_type = ScheduleProblem

    def __init__(self, name: str = "zeroth_order", inner_steps: int = 10, warmup_fraction: float = 0.5,
                 gamma: float = 1.0, gamma_end: float | None = None, num_directions: int = 1, delta: float = 0.01,
                 delta_z: float = 0.01, n_obj: int = 36, obj_inference_steps: int = 10, obj_batch_size: int = 500,
                 schedule_lr: float = 0.02, lr_z: float = 1.0e-3, on_nonfinite: str = "stop",
                 snr_repeats: int = 0, theta_z_gradient: str = "backprop", objective_scale: str = "initial",
                 detach_x0_below: float = DETACH_X0_BELOW) -> None:
        gamma_end = gamma if gamma_end is None else gamma_end
        checks = [(inner_steps >= 1, f"inner_steps must be >= 1 (got {inner_steps})"),
                  (0 <= warmup_fraction < 1, f"warmup_fraction must be in [0, 1) (got {warmup_fraction})"),
                  (gamma > 0 and gamma_end > 0, f"gamma and gamma_end must be > 0 (got {gamma}, {gamma_end})"),
                  (num_directions >= 1, f"num_directions must be >= 1 (got {num_directions})"),
                  (delta > 0 and delta_z > 0, f"delta and delta_z must be > 0 (got {delta}, {delta_z})"),
                  (n_obj >= 2, f"n_obj must be >= 2, FID needs two samples (got {n_obj})"),
                  (obj_inference_steps >= 1, f"obj_inference_steps must be >= 1 (got {obj_inference_steps})"),
                  (obj_batch_size >= 1, f"obj_batch_size must be >= 1 (got {obj_batch_size})"),
                  (schedule_lr > 0 and lr_z > 0, f"schedule_lr and lr_z must be > 0 (got {schedule_lr}, {lr_z})"),
                  (snr_repeats >= 0, f"snr_repeats must be >= 0 (got {snr_repeats})"),
                  (theta_z_gradient in ("backprop", "zeroth_order"),
                   f"theta_z_gradient must be backprop or zeroth_order (got {theta_z_gradient!r})"),
                  (objective_scale in ("initial", "none"),
                   f"objective_scale must be initial or none (got {objective_scale!r})"),
                  (0 <= detach_x0_below < 1, f"detach_x0_below must be in [0, 1) (got {detach_x0_below})")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"upper_estimator.{message}")
        super().__init__(name)
        self.inner_steps, self.warmup_fraction = int(inner_steps), float(warmup_fraction)
        self.gamma_start, self.gamma_end = float(gamma), float(gamma_end)
        self.num_directions, self.delta, self.delta_z = int(num_directions), float(delta), float(delta_z)
        self.n_obj, self.obj_inference_steps = int(n_obj), int(obj_inference_steps)
        self.obj_batch_size, self.schedule_lr, self.lr_z = int(obj_batch_size), float(schedule_lr), float(lr_z)
        self.on_nonfinite = check_policy(on_nonfinite, "upper_estimator.on_nonfinite")
        self.snr_repeats = int(snr_repeats)
        self.theta_z_gradient, self.objective_scale = theta_z_gradient, objective_scale
        self.detach_x0_below = float(detach_x0_below)

    def solve(self, problem: ScheduleProblem, ctx: RunContext) -> dict[str, Any]:
        """Alg. 6 on ``problem``; the reported model is theta_y's EMA (the network trained under the learned
        schedule) sampled under the final schedule."""
        self.check_problem(problem)
        loop = PenaltyLoop(self, problem, ctx)
        loop.fit()
        result = problem.report(loop.solver.ema_model(), problem.schedule, loop.solver.num_steps)
        report_nfe = result["sampler_nfe"]
        # a backward pass through the sampler costs about two forward passes
        return {**result, "report_nfe": report_nfe, "sampler_nfe": report_nfe + loop.objective_nfe,
                "sampler_cost": report_nfe + loop.objective_nfe + 2 * loop.backprop_nfe,
                "objective_nfe": loop.objective_nfe, "objective_ref": loop.objective_ref, "trainings_used": 1,
                "train_steps": loop.solver.num_steps,
                "train_steps_z": loop.bilevel_outer, "theta_z_minus_theta_y": loop.theta_distance()}

    def outer_steps(self, lower_steps: int) -> tuple[int, int]:
        """(warm-up outer steps, bilevel outer steps) for ``lower_steps`` theta_y steps in all."""
        if lower_steps < 1:
            raise ConfigError(f"upper_estimator=zeroth_order needs lower_solver.num_steps >= 1 (got {lower_steps})")
        total = -(-lower_steps // self.inner_steps)
        warmup = int(self.warmup_fraction * total)
        return warmup, total - warmup

    def gamma(self, bilevel_step: int, bilevel_steps: int) -> float:
        """gamma at bilevel outer step ``bilevel_step`` (0-based) of ``bilevel_steps``: linear ramp, last = end."""
        fraction = bilevel_step / (bilevel_steps - 1) if bilevel_steps > 1 else 1.0
        return self.gamma_start + (self.gamma_end - self.gamma_start) * fraction


class BoxAdam:
    """Adam on ``u = (q - lo) / (hi - lo)``, then ``q <- Proj_Q(lo + (hi - lo) u)`` after every step.

    One learning rate then moves every parameter by the same fraction of its box (the official code needed four
    hand-set rates). The rate decays to zero by a cosine over ``total_steps``. ``width`` is also the right
    per-coordinate scale for zeroth-order smoothing in the same coordinates.
    """

    def __init__(self, schedule: NoiseSchedule, lr: float, total_steps: int) -> None:
        missing = [name for name in schedule.param_names if name not in schedule.bounds]
        if missing:
            raise ConfigError(f"a learned schedule needs schedule.bounds for every parameter; missing {missing}")
        lo = torch.tensor([schedule.bounds[n][0] for n in schedule.param_names], dtype=torch.float64)
        hi = torch.tensor([schedule.bounds[n][1] for n in schedule.param_names], dtype=torch.float64)
        if not bool((hi > lo).all()):
            raise ConfigError(f"schedule.bounds must have low < high for every parameter (got {schedule.bounds})")
        self.schedule, self.lo, self.width = schedule, lo, hi - lo
        self.u = torch.nn.Parameter(self._normalised())
        self.optimizer = torch.optim.Adam([self.u], lr=lr)
        self.lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, total_steps))

    def _normalised(self) -> torch.Tensor:
        return (self.schedule.raw.detach() - self.lo) / self.width

    def step(self, grad_q: torch.Tensor) -> None:
        """One Adam step along ``-grad_q`` (the gradient in the schedule's own coordinates), then the projection."""
        self.u.grad = grad_q.detach().to(self.u) * self.width
        self.optimizer.step()
        self.lr_scheduler.step()
        with torch.no_grad():
            self.schedule.raw.copy_(self.lo + self.width * self.u)
            self.schedule.project_()
            self.u.copy_(self._normalised())

    def state_dict(self) -> dict:
        return {"u": self.u.detach().clone(), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.u.copy_(state["u"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])


class PenaltyLoop:
    """The state of paper Alg. 6 and one outer step of it (:meth:`step`); :meth:`fit` runs all of them."""

    def __init__(self, estimator: ZerothOrderEstimator, problem: ScheduleProblem, ctx: RunContext) -> None:
        schedule = problem.schedule
        if not schedule.learnable:
            raise ConfigError(f"upper_estimator=zeroth_order learns the schedule: use schedule=learned_cosine or "
                              f"schedule=learned_sigmoid (got the fixed schedule {schedule.name!r})")
        self.estimator, self.problem, self.schedule, self.ctx = estimator, problem, schedule, ctx
        self.solver = problem.new_solver()  # the same initial weights as a fixed-schedule run with this seed
        self.warmup_outer, self.bilevel_outer = estimator.outer_steps(self.solver.num_steps)
        self.theta_z = copy.deepcopy(self.solver.model)
        # theta_z's AdamW: the lower solver's weight decay and gradient clipping
        self.optimizer_z = torch.optim.AdamW(self.theta_z.parameters(), lr=estimator.lr_z,
                                             weight_decay=self.solver.optimizer.param_groups[0]["weight_decay"])
        self.lr_scheduler_z = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer_z, T_max=self.bilevel_outer)
        self.upper = BoxAdam(schedule, estimator.schedule_lr, self.bilevel_outer)
        self.generator = torch.Generator().manual_seed(ctx.seed)
        self.outer_step = 0
        self.objective_nfe = 0   # forward network evaluations of the in-loop objective
        self.backprop_nfe = 0    # ... of them back-propagated (theta_z_gradient=backprop)
        self.objective_ref: float | None = None  # F_0 of objective_scale=initial

    @property
    def total_outer(self) -> int:
        return self.warmup_outer + self.bilevel_outer

    def _batch(self) -> torch.Tensor:
        return self.problem.next_batch(self.solver.batch_size, self.generator).to(self.ctx.device)

    def _scale(self) -> float:
        return self.objective_ref if self.estimator.objective_scale == "initial" and self.objective_ref else 1.0

    def _in_loop_fid(self, seed: int) -> float:
        estimator = self.estimator
        fid, nfe = self.problem.in_loop_fid(self.theta_z, self.schedule, estimator.n_obj, seed,
                                            estimator.obj_inference_steps, estimator.obj_batch_size)
        self.objective_nfe += nfe
        return fid

    def objective(self, seed: int) -> float:
        """The upper objective: the cheap in-loop FID of ``theta_z`` under the current schedule, from noise drawn
        with ``seed``, divided by F_0 (``objective_scale=initial``)."""
        return self._in_loop_fid(seed) / self._scale()

    def objective_torch(self, seed: int) -> torch.Tensor:
        """:meth:`objective` as a torch scalar with a graph to theta_z's weights (``theta_z_gradient=backprop``)."""
        estimator = self.estimator
        fid, nfe = self.problem.in_loop_fid_differentiable(self.theta_z, self.schedule, estimator.n_obj, seed,
                                                           estimator.obj_inference_steps, estimator.detach_x0_below)
        self.objective_nfe += nfe
        self.backprop_nfe += nfe
        return fid / self._scale()

    def _penalised_gradient(self, params_z: list[torch.Tensor]) -> Callable[[], GradientEstimate]:
        estimator = self.estimator
        if estimator.theta_z_gradient == "zeroth_order":
            return lambda: two_point_gradient(params_z, self.objective, estimator.delta_z, estimator.num_directions,
                                              self.generator)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator))
        return lambda: backprop_gradient(params_z, lambda: self.objective_torch(seed))

    def _lower_loss(self, model: nn.Module, x0: torch.Tensor, noise_seed: int) -> Callable[[], torch.Tensor]:
        """L_SM(model; q) with a graph to q; both copies get the same batch, t and eps (common random numbers).
        With ``hardware=ddp``: this rank's share of it (``penalty_gradients`` sums the ranks' gradients)."""
        def loss() -> torch.Tensor:
            generator = torch.Generator().manual_seed(noise_seed)
            return self.problem.lower_loss(model, self.schedule.alphas_cumprod(), x0, generator)
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
            if self.estimator.objective_scale == "initial":  # F_0, from noise of its own
                self.objective_ref = self._in_loop_fid(int(torch.randint(0, 2**31 - 1, (1,),
                                                                         generator=self.generator)))
        gamma = self.estimator.gamma(bilevel_step, self.bilevel_outer)
        x0 = self._batch()
        noise_seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        params_z = list(self.theta_z.parameters())
        grads = penalty_gradients(self.schedule.raw, params_z, self._lower_loss(self.theta_z, x0, noise_seed),
                                  self._lower_loss(self.solver.model, x0, noise_seed), self.objective, gamma,
                                  self.estimator.delta, self.estimator.num_directions, self.generator,
                                  self._penalised_gradient(params_z), upper_scale=self.upper.width,
                                  upper_project=self.schedule.project_)
        where = f"outer step {self.outer_step + 1} (theta_y step {self.solver.step_count})"
        for quantity, tensors in (("schedule hyper-gradient", [grads.upper]), ("theta_z gradient", grads.penalised)):
            if not all(bool(torch.isfinite(t).all()) for t in tensors):
                nonfinite(self.estimator.on_nonfinite, quantity, where, "upper_estimator.on_nonfinite")
                return {"objective_fid": grads.objective * self._scale(), "gamma": gamma, "nonfinite_skipped": 1}
        for p, g in zip(params_z, grads.penalised):
            p.grad = g
        if self.solver.grad_clip:
            torch.nn.utils.clip_grad_norm_(params_z, self.solver.grad_clip)
        self.optimizer_z.step()
        self.optimizer_z.zero_grad(set_to_none=True)
        self.lr_scheduler_z.step()
        snr = self._q_gradient_snr(grads, gamma, noise_seed)
        self.upper.step(grads.upper)
        if not bool(torch.isfinite(self.schedule.raw).all()):
            raise NumericalFault(f"non-finite schedule parameters at {where}; the last good checkpoint is kept")
        return {"objective_fid": grads.objective * self._scale(), "objective_ref": self.objective_ref or math.nan,
                "loss_z": grads.lower_penalised, "gamma": gamma, "zo_skipped": grads.skipped_directions,
                "objective_nfe": self.objective_nfe, **grads.norms, **snr}

    def _q_gradient_snr(self, grads: PenaltyGradients, gamma: float, seed: int) -> dict[str, float]:
        """Signal-to-noise of the q-gradient of this step (``docs/method.md``): per coordinate |mean| / standard
        error of the estimate, the median over coordinates logged as ``q_grad_snr``. The penalty part is exact for
        the step's batch; the noise is the zeroth-order part's. With ``num_directions`` m >= 2 it is free: the m
        one-direction estimates of this step, standard error std / sqrt(m). ``snr_repeats`` k > 0 instead draws k
        more m-direction estimates at the same point (own directions from ``seed``, the run's random stream
        untouched; costs k estimates, counted in ``objective_nfe``); standard error = their std. Nothing with
        m = 1 and k = 0."""
        estimator, penalty_part = self.estimator, grads.upper - grads.upper_zo / gamma
        if estimator.snr_repeats:
            generator = torch.Generator().manual_seed(seed)
            estimates = [grads.upper]
            for _ in range(estimator.snr_repeats):
                zo = two_point_gradient([self.schedule.raw], self.objective, estimator.delta,
                                        estimator.num_directions, generator, scale=[self.upper.width],
                                        project=self.schedule.project_)
                estimates.append(zo.grads[0] / gamma + penalty_part)
            stack = torch.stack(estimates)
            error = stack.std(0)
        elif len(grads.upper_zo_directions) >= 2:
            stack = torch.stack([d / gamma + penalty_part for d in grads.upper_zo_directions])
            error = stack.std(0) / len(grads.upper_zo_directions) ** 0.5
        else:
            return {}
        return {"q_grad_snr": float((stack.mean(0).abs() / error.clamp_min(1e-30)).median())}

    def theta_distance(self) -> float:
        """||theta_z - theta_y||_2: zero would mean the penalised copy never moved apart (the official bug)."""
        return float(sum((z.detach() - y.detach()).double().pow(2).sum()
                         for z, y in zip(self.theta_z.parameters(), self.solver.model.parameters())) ** 0.5)

    def state_dict(self) -> dict:
        return {"solver": self.solver.state_dict(), "theta_z": self.theta_z.state_dict(),
                "optimizer_z": self.optimizer_z.state_dict(), "lr_scheduler_z": self.lr_scheduler_z.state_dict(),
                "schedule": self.schedule.state_dict(), "upper": self.upper.state_dict(),
                "generator": self.generator.get_state(), "outer_step": self.outer_step,
                "objective_nfe": self.objective_nfe, "backprop_nfe": self.backprop_nfe,
                "objective_ref": self.objective_ref}

    def load_state_dict(self, state: dict) -> None:
        self.solver.load_state_dict(state["solver"])
        self.theta_z.load_state_dict(state["theta_z"])
        self.optimizer_z.load_state_dict(state["optimizer_z"])
        self.lr_scheduler_z.load_state_dict(state["lr_scheduler_z"])
        self.schedule.load_state_dict(state["schedule"])
        self.upper.load_state_dict(state["upper"])
        self.generator.set_state(state["generator"])
        self.outer_step, self.objective_nfe = state["outer_step"], state["objective_nfe"]
        self.backprop_nfe, self.objective_ref = state["backprop_nfe"], state["objective_ref"]

    def fit(self) -> None:
        """All outer steps, one ``metrics.jsonl`` line each (``step`` = theta_y steps done); a checkpoint whenever
        the theta_y step count passes a multiple of ``checkpoint_every``, and at the end."""
        ctx, checkpoint_every = self.ctx, self.problem.checkpoint_every
        if ctx.resume and ctx.checkpoint_path.exists():
            state = load_checkpoint(ctx.checkpoint_path)
            self.load_state_dict(state)
            ctx.recorder.restore(state, self.solver.step_count)
        bar = tqdm(range(self.outer_step, self.total_outer), initial=self.outer_step, total=self.total_outer,
                   desc="bilevel (Alg. 6)", disable=None)
        for _ in bar:
            before = self.solver.step_count
            row = self.step()
            done = self.solver.step_count
            ctx.recorder.log(done, **row)
            bar.set_postfix(loss_y=f"{row['loss_y']:.4f}", obj=f"{row.get('objective_fid', float('nan')):.2f}")
            stop = stopping.requested()
            if ((checkpoint_every and done // checkpoint_every > before // checkpoint_every)
                    or self.outer_step == self.total_outer or stop):
                save_checkpoint({**self.state_dict(), **ctx.recorder.checkpoint_fields()},
                                ctx.checkpoint_path)
            if stop:
                stopping.raise_if_requested(f"after outer step {self.outer_step} (checkpoint saved)")
