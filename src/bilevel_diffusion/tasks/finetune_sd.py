"""``task=finetune_aesthetic | finetune_synthetic | finetune_hps``: Scenario A at paper scale (paper Sec. 3.1,
SPEC §1.1) on Stable Diffusion v1.5.

The pre-trained model is text-to-image (``model=stable_diffusion``; ``model=tiny`` for random-weight miniatures),
so the eps-model, the pre-trained samples and the rewards are per prompt. r2 (``task.lower_reward``, the reward
being fine-tuned) is the task's reward model and r1 (``task.upper_reward``) the CLIP score of the prompt. The
driver (:mod:`bilevel_diffusion.tasks.reward_finetuning`) runs any Scenario A ``upper_estimator`` and averages the
reported numbers over the prompts (the paper's Table 1): ``clip_score`` (= r1), ``reward`` (= r2),
``fid_vs_pretrained`` (FID between guided and pre-trained samples on the same noise, with the CLIP image
embedding of r1's model as features, since Inception weights are not assumed) and ``wall_clock_s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.lower_solvers.guided_sampling import GuidedSampler
from bilevel_diffusion.models.stable_diffusion import load_stable_diffusion
from bilevel_diffusion.rewards.base import ImageReward
from bilevel_diffusion.rewards.clip_score import ClipScore
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.tasks.finetune_gaussian import frechet_distance
from bilevel_diffusion.tasks.reward_finetuning import RewardFinetuneTask, RewardProblem


class FinetuneStableDiffusion(RewardFinetuneTask):
    """Learn the KL strength lambda of reward guidance on Stable Diffusion, one shared lambda over the prompts."""

    def __init__(self, name: str, prompts: Sequence[str], lower_reward: ImageReward, upper_reward: ClipScore,
                 **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        if not all(isinstance(p, str) for p in prompts):
            raise ConfigError(f"task.prompts must be a list of strings (got {list(prompts)})")
        self.prompts, self.lower_reward, self.upper_reward = list(prompts), lower_reward, upper_reward

    def build(self, cfg: DictConfig, ctx: RunContext) -> RewardProblem:
        sd = load_stable_diffusion(cfg.model, ctx.device)
        self.lower_reward.to(ctx.device)
        self.upper_reward.to(ctx.device)
        return RewardProblem(eps_fn=sd.eps_for, betas=sd.betas, sample_shape=sd.latent_shape, prompts=self.prompts,
                             r1=self.upper_reward.for_prompt, r2=self.lower_reward.for_prompt, drift=self.drift,
                             conditional=True, decode=sd.decode, nfe_per_sample=sd.nfe_per_sample)

    def make_sampler(self, cfg: DictConfig) -> GuidedSampler:
        return instantiate(cfg.lower_solver, clip_sample=False)  # latents are not confined to [-1, 1]

    @torch.no_grad()
    def drift(self, guided: torch.Tensor, reference: torch.Tensor) -> float:
        """``fid_vs_pretrained``: Fréchet distance of r1's CLIP image embeddings, guided vs pre-trained."""
        return frechet_distance(self.upper_reward.image_features(guided).cpu(),
                                self.upper_reward.image_features(reference).cpu())

    def run(self, cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
        result = super().run(cfg, ctx)
        return {**result, "clip_score": result["r1"], "reward": result["r2"]}

    def extra_summary(self, lam: float) -> dict[str, Any]:
        return {"prompts": self.prompts, "fid_features": self.upper_reward.feature_label,
                "reward_model": type(self.lower_reward).__name__}
