"""Scenario A driver shared by the reward fine-tuning tasks (SPEC §1.1): learn the KL strength lambda.

A task supplies a :class:`RewardProblem` (pre-trained eps-model, rewards r1 and r2 per prompt, a drift metric);
this module runs the chosen ``upper_estimator`` on it with the guided sampler (``lower_solver=guided_sampling``):

- ``closed_form`` (bilevel, Alg. 2): hyper-gradient steps on lambda from a pool of pre-trained samples
  (``task.pool_samples``; one pre-trained run serves every prompt of an unconditional model; refreshes are
  guided runs per prompt);
- ``grid`` / ``random`` / ``bayesian``: each trial runs the guided sampler at one lambda on ``task.trial_samples``
  samples per prompt and measures r1 (trial objective ``-r1``);
- ``weighted_sum``: no search; the reported run guides with ``r2 + weight * r1`` at its fixed lambda.

Every method ends with the same *reported* evaluation at its chosen lambda: guided samples from fixed noise
(``eval.num_samples``, ``eval.seed``) for every prompt, scored by r1, r2 and ``fid_vs_pretrained`` (drift from the
pre-trained samples on the same noise), averaged over prompts; ``objective = -r1`` (lower is better).
``sampler_nfe`` = ``method_nfe`` (what the method spent choosing lambda) + the reported evaluation's NFEs; the
pre-trained reference samples for the drift are counted apart (``reference_nfe``). A NaN/Inf mean reward in the
reported evaluation stops the run (exit 3); a search trial with a non-finite objective is a failed trial.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from bilevel_diffusion import distributed  # noqa: E402
from bilevel_diffusion.errors import ConfigError, NumericalFault  # noqa: E402
from bilevel_diffusion.lower_solvers.guided_sampling import EpsFn, GuidedSampler, Reward  # noqa: E402
from bilevel_diffusion.runtime import RunContext  # noqa: E402
from bilevel_diffusion.upper_estimators.closed_form import (BilevelTrace, ClosedFormEstimator,  # noqa: E402
                                                            RewardPool, tilt_weights)
from bilevel_diffusion.upper_estimators.search import SearchEstimator  # noqa: E402
from bilevel_diffusion.upper_estimators.weighted_sum import WeightedSum  # noqa: E402


@dataclass
class RewardProblem:
    """What a Scenario A task provides.

    ``conditional=True``: the pre-trained model depends on the prompt (text-to-image), ``eps_fn(prompt)`` returns
    that prompt's eps-model and the pre-trained samples are drawn per prompt; otherwise ``eps_fn`` serves every
    prompt. ``decode`` maps the sampler's space to images (a VAE decoder for latent models) and
    ``nfe_per_sample`` counts network passes per sample and step (2 with classifier-free guidance).
    """

    eps_fn: EpsFn | Callable[[Any], EpsFn]
    betas: torch.Tensor
    sample_shape: tuple[int, ...]
    prompts: Sequence[Any]
    r1: Callable[[Any], Reward]                            # prompt -> upper reward (per sample)
    r2: Callable[[Any], Reward]                            # prompt -> lower reward (per sample)
    drift: Callable[[torch.Tensor, torch.Tensor], float]   # (guided, pre-trained) -> fid_vs_pretrained
    conditional: bool = False
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None
    nfe_per_sample: int = 1


def _noise(num: int, seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn((num, *shape), generator=torch.Generator().manual_seed(seed))


class RewardFinetuneTask:
    """Base class of the ``finetune_*`` tasks: subclasses implement :meth:`build` (and may extend
    :meth:`make_sampler`, :meth:`extra_summary`)."""

    def __init__(self, name: str, pool_samples: int = 512, trial_samples: int = 256,
                 lambda_search: dict | None = None, log_every: int = 1, checkpoint_every: int = 0) -> None:
        if min(pool_samples, trial_samples) < 2 or log_every < 1 or checkpoint_every < 0:
            raise ConfigError(f"task needs pool_samples >= 2, trial_samples >= 2, log_every >= 1, "
                              f"checkpoint_every >= 0 (got {pool_samples}, {trial_samples}, {log_every}, "
                              f"{checkpoint_every})")
        self.name, self.pool_samples, self.trial_samples = name, int(pool_samples), int(trial_samples)
        self.log_every, self.checkpoint_every = int(log_every), int(checkpoint_every)
        self.lambda_search = dict(lambda_search or {"low": 0.01, "high": 100.0, "log": True})

    def build(self, cfg: DictConfig, ctx: RunContext) -> RewardProblem:  # pragma: no cover - abstract
        raise NotImplementedError

    def make_sampler(self, cfg: DictConfig) -> GuidedSampler:
        return instantiate(cfg.lower_solver)

    def extra_summary(self, lam: float) -> dict[str, Any]:
        return {}

    # -- the run ----------------------------------------------------------------------------------------------
    def run(self, cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
        self.ctx, self.eval_cfg = ctx, cfg.eval
        self.problem = self.build(cfg, ctx)
        self.sampler = self.make_sampler(cfg)
        self._references: dict[str, torch.Tensor] = {}
        self.reference_nfe = 0
        estimator = instantiate(cfg.upper_estimator)
        if isinstance(estimator, ClosedFormEstimator):
            result = self._bilevel(estimator)
        elif isinstance(estimator, SearchEstimator):
            result = self._search(estimator)
        elif isinstance(estimator, WeightedSum):
            result = self._report(estimator.lam, 0, 0, reward=lambda p: self._weighted(p, estimator.weight))
        else:
            raise ConfigError(f"upper_estimator={cfg.upper_estimator.name} does not apply to task {self.name} "
                              f"(use closed_form, grid, random, bayesian or weighted_sum)")
        return {**result, "reference_nfe": self.reference_nfe, **self.extra_summary(result["lambda"])}

    def _weighted(self, prompt: Any, weight: float) -> Reward:
        r1, r2 = self.problem.r1(prompt), self.problem.r2(prompt)
        return lambda x: r2(x) + weight * r1(x)

    def _sample(self, noise: torch.Tensor, reward: Reward | None, lam: float | None, prompt: Any = None):
        problem = self.problem
        eps_fn = problem.eps_fn(prompt) if problem.conditional else problem.eps_fn
        decode = {} if problem.decode is None else {"decode": problem.decode}
        out = self.sampler.sample(eps_fn, problem.betas, distributed.shard(noise), reward, lam,
                                  nfe_per_sample=problem.nfe_per_sample, device=self.ctx.device, **decode)
        nfe = int(distributed.sum_scalar(out.nfe, self.ctx.device))
        return replace(out, images=distributed.gather(out.images), nfe=nfe)

    def _noise_set(self, kind: str) -> torch.Tensor:
        """``eval``: the reported evaluation's fixed noise; ``trial``: the (smaller) in-loop noise of the searches."""
        if kind == "eval":
            return _noise(int(self.eval_cfg.num_samples), int(self.eval_cfg.seed), self.problem.sample_shape)
        return _noise(self.trial_samples, self.ctx.seed + 1, self.problem.sample_shape)

    def _reference(self, kind: str, prompt: Any) -> torch.Tensor:
        """Pre-trained (unguided) samples on the same noise, for ``fid_vs_pretrained``; sampled once (per prompt
        for conditional models)."""
        key = f"{kind}/{prompt}" if self.problem.conditional else kind
        if key not in self._references:
            out = self._sample(self._noise_set(kind), None, None, prompt)
            self._references[key], self.reference_nfe = out.images, self.reference_nfe + out.nfe
        return self._references[key]

    def evaluate(self, lam: float, kind: str = "trial", reward: Callable[[Any], Reward] | None = None,
                 save_as: str | None = None) -> dict[str, Any]:
        """Guided samples at ``lam`` for every prompt, scored by r1, r2 and the drift; averaged over prompts."""
        reward = reward or self.problem.r2
        noise = self._noise_set(kind)
        rows, nfe, shown = [], 0, []
        for prompt in self.problem.prompts:
            reference = self._reference(kind, prompt)
            out = self._sample(noise, reward(prompt), lam, prompt)
            nfe += out.nfe
            with torch.no_grad():
                rows.append((float(self.problem.r1(prompt)(out.images).mean()),
                             float(self.problem.r2(prompt)(out.images).mean()),
                             self.problem.drift(out.images, reference)))
            shown.append(out.images[:int(self.eval_cfg.grid_size)])
        if save_as is not None:
            self._save_samples(save_as, shown, reference[:int(self.eval_cfg.grid_size)], lam)
        r1, r2, drift = (sum(col) / len(rows) for col in zip(*rows))
        return {"objective": -r1, "lambda": lam, "r1": r1, "r2": r2, "fid_vs_pretrained": drift, "sampler_nfe": nfe}

    def _report(self, lam: float, method_nfe: int, step: int,
                reward: Callable[[Any], Reward] | None = None) -> dict[str, Any]:
        """The reported evaluation at the chosen ``lam`` (same noise for every method)."""
        result = self.evaluate(lam, "eval", reward, save_as="samples")
        for name in ("r1", "r2"):
            if not math.isfinite(result[name]):
                raise NumericalFault(f"non-finite reward {name} in the reported evaluation at step {step} "
                                     f"(lambda={lam:.4g})")
        result.update(method_nfe=method_nfe, sampler_nfe=method_nfe + result["sampler_nfe"],
                      eval_num_samples=int(self.eval_cfg.num_samples))
        self.ctx.recorder.log(step, **result)
        return result

    def _bilevel(self, estimator: ClosedFormEstimator) -> dict[str, Any]:
        def draw(lam_ref: float | None, step: int) -> list[RewardPool]:
            """Per prompt: a pool of rewards, from one shared pre-trained run or a guided run per prompt."""
            noise = _noise(self.pool_samples, self.ctx.seed + 7919 * step, self.problem.sample_shape)
            shared = self._sample(noise, None, None) if lam_ref is None and not self.problem.conditional else None
            pools = []
            for prompt in self.problem.prompts:
                r2 = self.problem.r2(prompt)
                out = shared if shared is not None else self._sample(noise, r2, lam_ref, prompt)
                with torch.no_grad():
                    pools.append(RewardPool(self.problem.r1(prompt)(out.images).double(), r2(out.images).double(),
                                            lam_ref, nfe=0 if shared is not None and pools else out.nfe))
            return pools

        trace = estimator.optimise(draw, self.ctx, self.log_every, self.checkpoint_every)
        self._plot_trace(trace)
        self._plot_pool_curve(trace, estimator.lambda_min, estimator.lambda_max)
        return {**self._report(trace.lam, trace.nfe, len(trace.lambdas)), "bilevel_steps": len(trace.lambdas)}

    def _search(self, estimator: SearchEstimator) -> dict[str, Any]:
        """Every trial is one guided evaluation; its samples are saved as ``trial_lambda_<value>.png``."""
        def trial(params: dict[str, float]) -> dict[str, Any]:
            return self.evaluate(params["lambda"], "trial", save_as=f"trial_lambda_{params['lambda']:.4g}")

        found = estimator.search({"lambda": self.lambda_search}, trial, self.ctx)
        trials = found.trials
        self._plot_curve([t.params["lambda"] for t in trials], [t.result["r1"] for t in trials],
                         [t.result["r2"] for t in trials], found.best_params["lambda"], "search trials")
        return {**self._report(found.best_params["lambda"], found.sampler_nfe, len(trials)), "trials": len(trials)}

    # -- figures ----------------------------------------------------------------------------------------------
    def _save_samples(self, name: str, shown: list[torch.Tensor], reference: torch.Tensor, lam: float) -> None:
        """Images: one grid (rows of prompts); vectors: a scatter of the first two coordinates vs pre-trained."""
        if len(self.problem.sample_shape) == 3:
            self.ctx.recorder.save_images(name, torch.cat(shown), nrow=shown[0].shape[0])
            return
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(reference[:, 0], reference[:, min(1, reference.shape[1] - 1)], s=3, alpha=0.4, label="pre-trained")
        for prompt, points in zip(self.problem.prompts, shown):
            ax.scatter(points[:, 0], points[:, min(1, points.shape[1] - 1)], s=3, alpha=0.4,
                       label=f"guided, lambda={lam:.3g}")
        ax.legend(fontsize=7, markerscale=3)
        self._save(fig, name)

    def _plot_trace(self, trace: BilevelTrace) -> None:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(trace.lambdas, marker=".")
        ax.set(xlabel="bilevel step", ylabel="lambda", yscale="log", title=f"{self.name}: lambda over steps")
        self._save(fig, "lambda_trace")

    def _plot_pool_curve(self, trace: BilevelTrace, low: float, high: float) -> None:
        """E_{p_lambda}[r1] and E_{p_lambda}[r2] against lambda, importance-weighted from the last pool."""
        lams = torch.logspace(torch.log10(torch.tensor(low)), torch.log10(torch.tensor(high)), 60).tolist()
        curves = [[sum(float((tilt_weights(p.r2, lam, p) * getattr(p, key)).sum()) for p in trace.pools)
                   / len(trace.pools) for lam in lams] for key in ("r1", "r2")]
        self._plot_curve(lams, curves[0], curves[1], trace.lam, "importance-weighted pool")

    def _plot_curve(self, lams: list[float], r1: list[float], r2: list[float], chosen: float, how: str) -> None:
        order = sorted(range(len(lams)), key=lams.__getitem__)
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([lams[i] for i in order], [r1[i] for i in order], marker=".", label="r1 (upper)")
        ax.plot([lams[i] for i in order], [r2[i] for i in order], marker=".", label="r2 (lower)")
        ax.axvline(chosen, color="k", ls="--", lw=1, label=f"chosen lambda = {chosen:.3g}")
        ax.set(xscale="log", xlabel="lambda", ylabel="mean reward", title=f"{self.name}: rewards vs lambda\n({how})")
        ax.legend(fontsize=7)
        self._save(fig, "rewards_vs_lambda")

    def _save(self, fig, name: str) -> None:
        path = self.ctx.run_dir / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        self.ctx.recorder.log_file_image(name, path)
