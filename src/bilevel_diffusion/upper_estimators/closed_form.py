"""``upper_estimator=closed_form``: the sample-efficient hyper-gradient of Scenario A (paper Alg. 2, Eq. 13).

Problem (``docs/method.md``, Scenario A): ``min_{lambda in the box} F(lambda) = -E_{p_lambda}[r1]`` with
``p_lambda ∝ p_pre exp(r2 / lambda)``. Derivation of the exact gradient: ``d/dlambda log p_lambda(u) =
-r2(u)/lambda^2 + E_{p_lambda}[r2]/lambda^2``, hence

    dF/dlambda = -E_{p_lambda}[r1 * d log p_lambda / dlambda] = Cov_{p_lambda}(r1, r2) / lambda^2.

Penalty form (gamma < inf): with ``h = r2 + r1/gamma`` and ``p_h ∝ p_pre exp(h / lambda)``, the penalised value
``F_gamma = gamma lambda (log Z_r2 - log Z_h)``, ``Z_h = E_pre[exp(h/lambda)]``, has (Danskin) the gradient

    dF_gamma/dlambda = gamma [KL(p_h || p_pre) - KL(p_r2 || p_pre)],   KL(p_h || p_pre) = E_{p_h}[h]/lambda - log Z_h,

which tends to ``Cov(r1, r2)/lambda^2`` as gamma -> inf.

Monte Carlo: every expectation is a self-normalised importance average over one pool of samples with rewards
(r1_i, r2_i), computed in log space (softmax / logsumexp), so lambda from 1e-4 to 1e4 gives finite numbers. The pool
may come from ``p_pre`` (``lam_ref=None``, Alg. 2) or from the guided sampler at ``lam_ref`` (a refresh): then the
proposal is ``p_pre exp(r2/lam_ref)`` up to a constant, every log-weight gets ``- r2/lam_ref`` and the unknown
normalising constants cancel in the KL difference.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from bilevel_diffusion import stopping
from bilevel_diffusion.checkpoint import load_loop, save_checkpoint
from bilevel_diffusion.errors import ConfigError, NumericalFault, check_policy, nonfinite
from bilevel_diffusion.problems.reward import RewardProblem, check_in_lambda_box
from bilevel_diffusion.reporting.reward_figures import plot_lambda_trace, plot_rewards_vs_lambda
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.upper_estimators.base import UpperEstimator

log = logging.getLogger(__name__)


@dataclass
class RewardPool:
    """Rewards of N samples drawn from ``p_pre exp(r2 / lam_ref)`` (``lam_ref=None``: from ``p_pre``)."""

    r1: torch.Tensor
    r2: torch.Tensor
    lam_ref: float | None = None
    nfe: int = 0          # sampler network evaluations spent drawing this pool
    cost: int = 0         # the same in forward-pass equivalents (a guided step's backward pass counts 2)

    def finite(self) -> RewardPool:
        """The samples whose r1 and r2 are both finite."""
        keep = torch.isfinite(self.r1) & torch.isfinite(self.r2)
        return RewardPool(self.r1[keep], self.r2[keep], self.lam_ref, self.nfe, self.cost)

    def log_proposal(self) -> torch.Tensor:
        """log of the proposal density relative to p_pre, up to a constant."""
        r2 = self.r2.double()
        return r2 / self.lam_ref if self.lam_ref is not None else torch.zeros_like(r2)


@dataclass
class HyperGradient:
    grad: float          # dF/dlambda (or dF_gamma/dlambda)
    ess: float           # effective sample size of the p_lambda weights
    objective: float     # F(lambda) = -E_{p_lambda}[r1], self-normalised estimate


def tilt_weights(values: torch.Tensor, lam: float, pool: RewardPool) -> torch.Tensor:
    """Self-normalised weights of ``p_pre exp(values / lam)`` for the pool's samples (softmax in log space)."""
    return torch.softmax(values.double() / lam - pool.log_proposal(), dim=0)


def kl_to_pretrained(values: torch.Tensor, lam: float, pool: RewardPool) -> torch.Tensor:
    """KL(p_v || p_pre) up to a constant that depends only on the pool (it cancels in differences)."""
    log_w = values.double() / lam - pool.log_proposal()
    return (torch.softmax(log_w, dim=0) * values.double()).sum() / lam - torch.logsumexp(log_w, dim=0)


def hypergradient(pool: RewardPool, lam: float, gamma: float | None = None) -> HyperGradient:
    """Eq. 13: ``Cov(r1, r2)/lambda^2`` (``gamma=None``) or ``gamma [KL(p_h||p_pre) - KL(p_r2||p_pre)]``."""
    r1, r2 = pool.r1.double(), pool.r2.double()
    w = tilt_weights(r2, lam, pool)
    mean1 = (w * r1).sum()
    if gamma is None:
        grad = (w * (r1 - mean1) * (r2 - (w * r2).sum())).sum() / lam**2
    else:
        grad = gamma * (kl_to_pretrained(r2 + r1 / gamma, lam, pool) - kl_to_pretrained(r2, lam, pool))
    return HyperGradient(float(grad), float(1.0 / (w**2).sum()), float(-mean1))


@dataclass
class BilevelTrace:
    """The lambda iterates of :meth:`ClosedFormEstimator.optimise` (one row per step)."""

    lam: float
    lambdas: list[float] = field(default_factory=list)
    grads: list[float] = field(default_factory=list)
    ess: list[float] = field(default_factory=list)
    nfe: int = 0          # summed over every pool drawn
    cost: int = 0         # the same in forward-pass equivalents
    low_ess_skips: int = 0  # steps not taken: the pool's weights at lambda had too small an effective sample size
    pools: list[RewardPool] = field(default_factory=list)  # the last pools (for plots of E_{p_lambda}[r])


class ClosedFormEstimator(UpperEstimator):
    """Projected first-order steps on lambda with the Monte Carlo hyper-gradient (paper Alg. 2).

    ``param=log`` steps on ``theta = log lambda`` (gradient ``lambda dF/dlambda``; scale-free), ``param=linear`` on
    lambda itself. The optimiser is torch's Adam or SGD with a cosine-annealed step size; after each step lambda is
    projected onto the task's lambda box (``task.lambda_box``, the box of every method). ``refresh_every = k > 0``
    redraws the pool from the guided sampler at the current lambda every k steps (importance samples from p_lambda);
    ``refresh_min_ess = f > 0`` also redraws it whenever the effective sample size (ESS) of the weights falls below
    ``f N``. ``min_ess = m``: a step whose pool has an ESS below ``m N`` at the current lambda is not taken (logged
    as ``skipped_low_ess``): with a collapsed pool the hyper-gradient is noise, and Adam would step on it anyway.

    Numerical faults: a NaN/Inf reward in a pool, hyper-gradient or lambda raises :class:`NumericalFault` naming the
    step and the quantity before lambda or the checkpoint change (``on_nonfinite=stop``); ``on_nonfinite=skip``
    drops the pool's non-finite samples and skips a step whose hyper-gradient or lambda is non-finite.
    """

    problem_type = RewardProblem

    def __init__(self, name: str = "closed_form", lambda_init: float = 5.0, gamma: float | None = None,
                 num_steps: int = 100, lr: float = 0.1, optimizer: str = "adam", param: str = "log",
                 refresh_every: int = 10, refresh_min_ess: float = 0.0, min_ess: float = 0.1,
                 final_lr_fraction: float = 0.01, on_nonfinite: str = "stop") -> None:
        if not lambda_init > 0:
            raise ConfigError(f"upper_estimator.lambda_init must be > 0 (got {lambda_init})")
        if gamma is not None and gamma <= 0:
            raise ConfigError(f"upper_estimator.gamma must be > 0, or null for the gamma -> inf limit (got {gamma})")
        if optimizer not in ("adam", "sgd") or param not in ("log", "linear"):
            raise ConfigError(f"upper_estimator.optimizer must be adam|sgd and param log|linear "
                              f"(got {optimizer!r}, {param!r})")
        if num_steps < 1 or lr <= 0 or refresh_every < 0 or not 0 <= refresh_min_ess < 1 or not 0 <= min_ess < 1:
            raise ConfigError("upper_estimator needs num_steps >= 1, lr > 0, refresh_every >= 0, "
                              "0 <= refresh_min_ess < 1 and 0 <= min_ess < 1")
        super().__init__(name)
        self.lambda_init, self.min_ess = float(lambda_init), float(min_ess)
        self.gamma, self.num_steps, self.lr, self.optimizer, self.param = gamma, num_steps, lr, optimizer, param
        self.refresh_every, self.refresh_min_ess, self.final_lr_fraction = (refresh_every, refresh_min_ess,
                                                                           final_lr_fraction)
        self.on_nonfinite = check_policy(on_nonfinite, "upper_estimator.on_nonfinite")

    def check_space(self, space: Mapping[str, Mapping[str, Any]]) -> None:
        """``lambda_init`` must lie in the task's lambda box."""
        check_in_lambda_box(space, self.lambda_init, "upper_estimator.lambda_init")

    def solve(self, problem: RewardProblem, ctx: RunContext) -> dict[str, Any]:
        """Paper Alg. 2 on ``problem``: the lambda loop on its reward pools, then its reported evaluation."""
        self.check_problem(problem)
        self.check_space(problem.search_space())
        box = (float(problem.lambda_space["low"]), float(problem.lambda_space["high"]))

        def draw(lam_ref: float | None, step: int) -> list[RewardPool]:
            return [RewardPool(r1, r2, lam_ref, nfe, cost) for r1, r2, nfe, cost in problem.draw_pools(lam_ref, step)]

        trace = self.optimise(draw, ctx, box, problem.log_every, problem.checkpoint_every)
        if trace.low_ess_skips:
            log.warning("%d of %d lambda steps were not taken: the pool's effective sample size at lambda fell below "
                        "upper_estimator.min_ess = %g of the pool (refresh it: upper_estimator=closed_form)",
                        trace.low_ess_skips, self.num_steps, self.min_ess)
        problem.figure("lambda_trace", plot_lambda_trace(trace.lambdas, ctx.run_dir / "lambda_trace.png",
                                                         problem.name))
        lams = torch.logspace(math.log10(box[0]), math.log10(box[1]), 60).tolist()
        curves = [[sum(float((tilt_weights(p.r2, lam, p) * getattr(p, key)).sum()) for p in trace.pools)
                   / len(trace.pools) for lam in lams] for key in ("r1", "r2")]
        problem.figure("rewards_vs_lambda", plot_rewards_vs_lambda(
            lams, curves[0], curves[1], trace.lam, ctx.run_dir / "rewards_vs_lambda.png", problem.name,
            "importance-weighted pool"))
        return {**problem.report(trace.lam, trace.nfe, len(trace.lambdas), method_cost=trace.cost),
                "bilevel_steps": len(trace.lambdas), "low_ess_skips": trace.low_ess_skips}

    def _fault(self, quantity: str, step: int) -> None:
        """A non-finite ``quantity``: raise (``on_nonfinite=stop``) or return, and the caller skips it."""
        nonfinite(self.on_nonfinite, quantity, f"bilevel step {step}", "upper_estimator.on_nonfinite")

    def _checked(self, pools: Sequence[RewardPool], step: int) -> list[RewardPool]:
        """The pools with their non-finite rewards dropped (``skip``) or a fault (``stop``)."""
        checked = []
        for index, pool in enumerate(pools):
            for name in ("r1", "r2"):
                bad = int((~torch.isfinite(getattr(pool, name))).sum())
                if bad:
                    self._fault(f"reward {name} ({bad} of {pool.r1.shape[0]} samples, prompt #{index})", step)
            pool = pool.finite()
            if pool.r1.shape[0] < 2:
                raise NumericalFault(f"fewer than 2 finite rewards in the pool of prompt #{index} at bilevel step "
                                     f"{step}")
            checked.append(pool)
        return checked

    def _refresh_due(self, step: int, pools: Sequence[RewardPool], lam: float) -> bool:
        """Every ``refresh_every`` steps, or when the weights at ``lam`` keep < ``refresh_min_ess`` of a pool."""
        if step > 0 and self.refresh_every and step % self.refresh_every == 0:
            return True
        return any(pool.lam_ref != lam and float(1.0 / (tilt_weights(pool.r2, lam, pool) ** 2).sum())
                   < self.refresh_min_ess * pool.r2.shape[0] for pool in pools)

    def _to_lambda(self, theta: torch.Tensor) -> float:
        return float(theta.detach().exp()) if self.param == "log" else float(theta.detach())

    def optimise(self, draw: Callable[[float | None, int], Sequence[RewardPool]], ctx: RunContext,
                 box: tuple[float, float], log_every: int = 1, checkpoint_every: int = 0) -> BilevelTrace:
        """Run the loop in the lambda box ``(low, high)``; ``draw(lam_ref, step)`` returns one pool per prompt
        (``lam_ref=None``: pre-trained samples; ``step``: the bilevel step, for seeding).

        With several prompts lambda is shared and F is their average, so the gradient is the average too.
        The loop (lambda, optimiser, pools, trace) is saved to ``ctx.checkpoint_path`` every ``checkpoint_every``
        steps (0: only at the end); with ``ctx.resume`` the loop continues from there.
        """
        theta = torch.tensor(math.log(self.lambda_init) if self.param == "log" else self.lambda_init,
                             dtype=torch.float64, requires_grad=True)
        # Adam with a short second-moment memory (beta2 = 0.9): the hyper-gradient's scale changes by orders of
        # magnitude along the path (it grows like 1/lambda^2), and a long memory would freeze the steps.
        optim = (torch.optim.Adam([theta], lr=self.lr, betas=(0.9, 0.9)) if self.optimizer == "adam"
                 else torch.optim.SGD([theta], lr=self.lr))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=self.num_steps,
                                                              eta_min=self.lr * self.final_lr_fraction)
        bounds = (math.log(box[0]), math.log(box[1])) if self.param == "log" else box
        start = 0
        if ctx.resume and ctx.checkpoint_path.exists():
            state = load_loop(ctx.checkpoint_path, theta, optim, schedule)
            pools, trace, start = state["pools"], state["trace"], state["step"]
            ctx.recorder.restore(state, start - 1)
        else:
            pools = self._checked(draw(None, 0), 0)
            trace = BilevelTrace(self.lambda_init, nfe=sum(p.nfe for p in pools), cost=sum(p.cost for p in pools))
        bar = tqdm(range(start, self.num_steps), initial=start, total=self.num_steps, desc="lambda (Alg. 2)",
                   disable=None)
        for step in bar:
            lam = self._to_lambda(theta)
            bar.set_postfix(lam=f"{lam:.4g}")
            if self._refresh_due(step, pools, lam):
                pools = self._checked(draw(lam, step), step)
                trace.nfe += sum(p.nfe for p in pools)
                trace.cost += sum(p.cost for p in pools)
            estimates = [hypergradient(pool, lam, self.gamma) for pool in pools]
            grad = sum(e.grad for e in estimates) / len(estimates)
            ess = min(e.ess for e in estimates)
            low_ess = any(e.ess < self.min_ess * pool.r2.shape[0] for e, pool in zip(estimates, pools))
            previous = theta.detach().clone()
            theta.grad = torch.tensor(grad * lam if self.param == "log" else grad, dtype=torch.float64)
            if low_ess:
                trace.low_ess_skips += 1
            elif math.isfinite(grad):
                optim.step()
            else:
                self._fault(f"hyper-gradient (lambda={lam:.4g})", step)
            with warnings.catch_warnings():  # a skipped first step: the schedule still counts it
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
                schedule.step()
            with torch.no_grad():
                theta.clamp_(*bounds)
                if not math.isfinite(self._to_lambda(theta)):
                    self._fault("lambda", step)
                    theta.copy_(previous)
            trace.lambdas.append(lam)
            trace.grads.append(grad)
            trace.ess.append(ess)
            if step % log_every == 0 or step + 1 == self.num_steps:
                ctx.recorder.log(step, **{"lambda": lam, "hypergrad": grad, "ess": ess,
                                          "objective_mc": sum(e.objective for e in estimates) / len(estimates),
                                          "skipped_low_ess": int(low_ess)})
            stop = stopping.requested()
            if (checkpoint_every and (step + 1) % checkpoint_every == 0) or step + 1 == self.num_steps or stop:
                save_checkpoint({"theta": theta.detach(), "optim": optim.state_dict(),
                                 "schedule": schedule.state_dict(), "pools": pools, "trace": trace,
                                 "step": step + 1, **ctx.recorder.checkpoint_fields()}, ctx.checkpoint_path)
            if stop:
                stopping.raise_if_requested(f"after lambda step {step + 1} (checkpoint saved)")
        trace.lam, trace.pools = self._to_lambda(theta), pools
        return trace
