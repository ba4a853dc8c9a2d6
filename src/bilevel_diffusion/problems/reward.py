"""The Scenario A problem (paper Sec. 3.1, ``docs/method.md``): learn the KL strength lambda of reward guidance.

    upper:  min_lambda  -E_{p_lambda}[r1]          lower:  p_lambda ∝ p_pre exp(r2 / lambda)

A task fills a :class:`RewardProblem` with the pre-trained eps-model, the rewards r1 and r2 per prompt, a drift
metric and the guided sampler (``lower_solver=guided_sampling``, paper Alg. 5); upper estimators use it through

- :meth:`draw_pools`: rewards of samples from ``p_pre`` or from the guided sampler (the closed-form estimator);
- :meth:`search_space` / :meth:`trial` / :meth:`report_search`: one guided evaluation per lambda (the searches);
- :meth:`report`: the *reported* evaluation at the chosen lambda, the same for every method: guided samples from
  fixed noise (``eval.num_samples``, ``eval.seed``) for every prompt, scored by r1, r2 and the drift from the
  pre-trained samples on the same noise (``fid_vs_pretrained``, ``kid_vs_pretrained`` on
  ``distance_num_samples`` per set), averaged over prompts; ``objective = -r1``.

``sampler_nfe`` = ``method_nfe`` (what the method spent choosing lambda) + the reported evaluation's NFEs;
``sampler_cost`` is the same in forward-pass equivalents (a guided step also back-propagates through the network,
counted as two forward passes); the pre-trained reference samples for the drift are counted apart
(``reference_nfe``). A NaN/Inf mean reward in the reported evaluation stops the run (exit 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from bilevel_diffusion import distributed
from bilevel_diffusion.errors import ConfigError, NumericalFault
from bilevel_diffusion.evaluation import fixed_noise
from bilevel_diffusion.lower_solvers.guided_sampling import GuidedSampler, GuidedSamples
from bilevel_diffusion.reporting.reward_figures import plot_rewards_vs_lambda, plot_sample_scatter
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.sampling.ddim import EpsFn, Reward

#: the pool of one prompt: (r1 values, r2 values, sampler NFEs spent on it, the same in forward-pass equivalents)
PoolRewards = tuple[torch.Tensor, torch.Tensor, int, int]


def check_in_lambda_box(space: Mapping[str, Mapping[str, Any]], value: float, option: str) -> None:
    """A ``ConfigError`` unless the task's lambda box (``space["lambda"]``) is ``0 < low < high`` and holds
    ``value`` (the estimator's setting ``option``): checked before any work."""
    low, high = float(space["lambda"]["low"]), float(space["lambda"]["high"])
    if not 0 < low < high:
        raise ConfigError(f"task.lambda_box needs 0 < low < high (got {low}, {high})")
    if not low <= value <= high:
        raise ConfigError(f"{option}={value} is outside task.lambda_box [{low}, {high}]")


class RewardProblem:
    """A Scenario A instance, its sampler and its reported evaluation.

    ``conditional=True``: the pre-trained model depends on the prompt (text-to-image), ``eps_fn(prompt)`` returns
    that prompt's eps-model and the pre-trained samples are drawn per prompt; otherwise ``eps_fn`` serves every
    prompt. ``decode`` maps the sampler's space to images (a VAE decoder for latent models) and
    ``nfe_per_sample`` counts network passes per sample and step (2 with classifier-free guidance).
    ``evaluation`` holds ``num_samples``, ``seed`` and ``grid_size`` of the reported evaluation.
    """

    def __init__(self, *, name: str, eps_fn: EpsFn | Callable[[Any], EpsFn], betas: torch.Tensor,
                 sample_shape: tuple[int, ...], prompts: Sequence[Any], r1: Callable[[Any], Reward],
                 r2: Callable[[Any], Reward], drift: Callable[[torch.Tensor, torch.Tensor], Mapping[str, float]],
                 sampler: GuidedSampler, ctx: RunContext, evaluation: Mapping[str, Any], pool_samples: int,
                 trial_samples: int, lambda_space: Mapping[str, Any], log_every: int = 1, checkpoint_every: int = 0,
                 conditional: bool = False, decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 nfe_per_sample: int = 1) -> None:
        self.name, self.eps_fn, self.betas, self.sample_shape = name, eps_fn, betas, tuple(sample_shape)
        self.prompts, self.r1, self.r2, self.drift = list(prompts), r1, r2, drift
        self.sampler, self.ctx, self.conditional = sampler, ctx, conditional
        self.decode, self.nfe_per_sample = decode, int(nfe_per_sample)
        self.num_eval, self.eval_seed = int(evaluation["num_samples"]), int(evaluation["seed"])
        self.grid_size = int(evaluation["grid_size"])
        self.pool_samples, self.trial_samples = int(pool_samples), int(trial_samples)
        self.lambda_space = dict(lambda_space)
        self.log_every, self.checkpoint_every = int(log_every), int(checkpoint_every)
        self._references: dict[str, torch.Tensor] = {}
        self.reference_nfe = 0

    # -- sampling ---------------------------------------------------------------------------------------------
    def sample(self, noise_: torch.Tensor, reward: Reward | None, lam: float | None,
               prompt: Any = None) -> GuidedSamples:
        """Guided samples of ``p_pre exp(reward / lam)`` (unguided when ``reward`` or ``lam`` is None) from
        ``noise_``; with ``hardware=ddp`` each rank samples its shard and every rank gets all samples."""
        eps_fn = self.eps_fn(prompt) if self.conditional else self.eps_fn
        decode = {} if self.decode is None else {"decode": self.decode}
        out = self.sampler.sample(eps_fn, self.betas, distributed.shard(noise_), reward, lam,
                                  nfe_per_sample=self.nfe_per_sample, device=self.ctx.device, **decode)
        nfe = int(distributed.sum_scalar(out.nfe, self.ctx.device))
        cost = int(distributed.sum_scalar(out.cost, self.ctx.device))
        return replace(out, images=distributed.gather(out.images), nfe=nfe, cost=cost)

    def draw_pools(self, lam_ref: float | None, step: int) -> list[PoolRewards]:
        """Per prompt, the rewards of ``pool_samples`` samples from ``p_pre`` (``lam_ref=None``: one shared
        unguided run for an unconditional model) or from the guided sampler at ``lam_ref``; ``step`` seeds them."""
        pool_noise = fixed_noise(self.pool_samples, self.ctx.seed + 7919 * step, self.sample_shape)
        shared = self.sample(pool_noise, None, None) if lam_ref is None and not self.conditional else None
        pools: list[PoolRewards] = []
        for prompt in self.prompts:
            r2 = self.r2(prompt)
            out = shared if shared is not None else self.sample(pool_noise, r2, lam_ref, prompt)
            with torch.no_grad():
                counted = shared is None or not pools  # a shared pre-trained run is paid for once
                pools.append((self.r1(prompt)(out.images).double(), r2(out.images).double(),
                              out.nfe if counted else 0, out.cost if counted else 0))
        return pools

    def _noise_set(self, kind: str) -> torch.Tensor:
        """``eval``: the reported evaluation's fixed noise; ``trial``: the (smaller) in-loop noise of the searches."""
        if kind == "eval":
            return fixed_noise(self.num_eval, self.eval_seed, self.sample_shape)
        return fixed_noise(self.trial_samples, self.ctx.seed + 1, self.sample_shape)

    def _reference(self, kind: str, prompt: Any) -> torch.Tensor:
        """Pre-trained (unguided) samples on the same noise, for ``fid_vs_pretrained``; sampled once (per prompt
        for conditional models)."""
        key = f"{kind}/{prompt}" if self.conditional else kind
        if key not in self._references:
            out = self.sample(self._noise_set(kind), None, None, prompt)
            self._references[key], self.reference_nfe = out.images, self.reference_nfe + out.nfe
        return self._references[key]

    # -- evaluation -------------------------------------------------------------------------------------------
    def evaluate(self, lam: float, kind: str = "trial", reward: Callable[[Any], Reward] | None = None,
                 save_as: str | None = None) -> dict[str, Any]:
        """Guided samples at ``lam`` for every prompt, scored by r1, r2 and the drift; averaged over prompts."""
        reward = reward or self.r2
        noise_ = self._noise_set(kind)
        rows, nfe, cost, shown = [], 0, 0, []
        for prompt in self.prompts:
            reference = self._reference(kind, prompt)
            out = self.sample(noise_, reward(prompt), lam, prompt)
            nfe += out.nfe
            cost += out.cost
            with torch.no_grad():
                rows.append((float(self.r1(prompt)(out.images).mean()), float(self.r2(prompt)(out.images).mean()),
                             self.drift(out.images, reference)))
            shown.append(out.images[:self.grid_size])
        if save_as is not None:
            self._save_samples(save_as, shown, reference[:self.grid_size], lam)
        r1, r2 = (sum(row[i] for row in rows) / len(rows) for i in (0, 1))
        fid, kid = (sum(row[2][key] for row in rows) / len(rows) for key in ("fid", "kid"))
        return {"objective": -r1, "lambda": lam, "r1": r1, "r2": r2, "fid_vs_pretrained": fid,
                "kid_vs_pretrained": kid, "distance_num_samples": rows[0][2]["n"], "sampler_nfe": nfe,
                "sampler_cost": cost}

    def report(self, lam: float, method_nfe: int, step: int, reward: Callable[[Any], Reward] | None = None,
               method_cost: int = 0) -> dict[str, Any]:
        """The reported evaluation at the chosen ``lam`` (the same noise for every method), logged at ``step``;
        ``method_nfe`` / ``method_cost``: what the method spent choosing ``lam``."""
        result = self.evaluate(lam, "eval", reward, save_as="samples")
        for name in ("r1", "r2"):
            if not math.isfinite(result[name]):
                raise NumericalFault(f"non-finite reward {name} in the reported evaluation at step {step} "
                                     f"(lambda={lam:.4g})")
        result.update(method_nfe=method_nfe, sampler_nfe=method_nfe + result["sampler_nfe"], method_cost=method_cost,
                      sampler_cost=method_cost + result["sampler_cost"], eval_num_samples=self.num_eval)
        self.ctx.recorder.log(step, **result)
        return result

    def weighted_reward(self, weight: float) -> Callable[[Any], Reward]:
        """Per prompt, the scalarised guidance reward ``r2 + weight * r1`` (the weighted-sum baseline)."""
        def for_prompt(prompt: Any) -> Reward:
            r1, r2 = self.r1(prompt), self.r2(prompt)
            return lambda x: r2(x) + weight * r1(x)
        return for_prompt

    # -- the search interface ---------------------------------------------------------------------------------
    def search_space(self) -> dict[str, Mapping[str, Any]]:
        return {"lambda": self.lambda_space}

    def trial(self, params: Mapping[str, float]) -> dict[str, Any]:
        """One guided evaluation at ``params["lambda"]`` on the trial noise, saved as ``trial_lambda_<value>.png``."""
        return self.evaluate(params["lambda"], "trial", save_as=f"trial_lambda_{params['lambda']:.4g}")

    def report_trial(self, params: Mapping[str, float]) -> dict[str, Any]:
        """The trial's lambda on the evaluation noise (as :meth:`report` scores it), for the anytime curves
        (``docs/results.md``); a measurement, never used to choose lambda."""
        result = self.evaluate(params["lambda"], "eval")
        return {key: result[key] for key in ("objective", "r1", "r2")}

    def report_search(self, found: Any) -> dict[str, Any]:
        """The reported evaluation at the search's best lambda, and the trials' rewards against lambda."""
        trials = found.trials
        for prompt in self.prompts:  # the trials' reference samples, counted in reference_nfe also after a resume
            self._reference("trial", prompt)
        self.figure("rewards_vs_lambda", plot_rewards_vs_lambda(
            [t.params["lambda"] for t in trials], [t.result["r1"] for t in trials], [t.result["r2"] for t in trials],
            found.best_params["lambda"], self.ctx.run_dir / "rewards_vs_lambda.png", self.name, "search trials"))
        cost = sum(int(t.result.get("sampler_cost", 0)) for t in trials)
        return {**self.report(found.best_params["lambda"], found.sampler_nfe, len(trials), method_cost=cost),
                "trials": len(trials)}

    # -- figures ----------------------------------------------------------------------------------------------
    def figure(self, name: str, path) -> None:
        """Send a figure already written into the run directory to the logger."""
        self.ctx.recorder.log_file_image(name, path)

    def _save_samples(self, name: str, shown: list[torch.Tensor], reference: torch.Tensor, lam: float) -> None:
        """Images: one grid (rows of prompts); vectors: a scatter of the first two coordinates vs pre-trained."""
        if len(self.sample_shape) == 3:
            self.ctx.recorder.save_images(name, torch.cat(shown), nrow=shown[0].shape[0])
            return
        self.figure(name, plot_sample_scatter(shown, reference, lam, self.ctx.run_dir / f"{name}.png"))
