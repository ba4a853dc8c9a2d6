"""``task=finetune_aesthetic | finetune_synthetic | finetune_hps``: Scenario A at paper scale (paper Sec. 3.1,
``docs/method.md``) on Stable Diffusion v1.5. The three task options are this one task with a different r2.

The pre-trained model is text-to-image (``model=stable_diffusion``; ``model=tiny`` for random-weight miniatures),
so the eps-model, the pre-trained samples and the rewards are per prompt. r2 (``task.lower_reward``, the reward
being fine-tuned) is the task's reward model and r1 (``task.upper_reward``) the CLIP score of the prompt. Any
Scenario A ``upper_estimator`` runs on it; the reported numbers are averaged over the prompts (the paper's Table 1):
``clip_score`` (= r1), ``reward`` (= r2), ``fid_vs_pretrained`` (FID between guided and pre-trained samples on the
same noise, with the CLIP image embedding of r1's model as features, since Inception weights are not assumed), its
KID ``kid_vs_pretrained`` and ``wall_clock_s``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.metrics.distances import feature_distances
from bilevel_diffusion.models.stable_diffusion import load_stable_diffusion
from bilevel_diffusion.rewards.base import ImageReward
from bilevel_diffusion.rewards.clip_score import ClipScore
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.task import RewardTask


class FinetuneStableDiffusion(RewardTask):
    """Learn the KL strength lambda of reward guidance on Stable Diffusion, one shared lambda over the prompts."""

    headline = ("lambda", "clip_score", "reward", "fid_vs_pretrained")

    def __init__(self, name: str, model: Mapping[str, Any], prompts: Sequence[str], lower_reward: ImageReward,
                 upper_reward: ClipScore, **settings: Any) -> None:
        super().__init__(name, **settings)
        if not all(isinstance(p, str) for p in prompts):
            raise ConfigError(f"task.prompts must be a list of strings (got {list(prompts)})")
        self.model, self.prompts = model, list(prompts)
        self.lower_reward, self.upper_reward = lower_reward, upper_reward

    def problem_parts(self, ctx: RunContext) -> dict[str, Any]:
        sd = load_stable_diffusion(self.model, ctx.device)
        self.lower_reward.to(ctx.device)
        self.upper_reward.to(ctx.device)
        return {"eps_fn": sd.eps_for, "betas": sd.betas, "sample_shape": sd.latent_shape, "prompts": self.prompts,
                "r1": self.upper_reward.for_prompt, "r2": self.lower_reward.for_prompt, "drift": self.drift,
                "conditional": True, "decode": sd.decode, "nfe_per_sample": sd.nfe_per_sample}

    @torch.no_grad()
    def drift(self, guided: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """``fid_vs_pretrained`` / ``kid_vs_pretrained``: Fréchet and kernel distances of r1's CLIP image embeddings,
        guided vs pre-trained."""
        return feature_distances(self.upper_reward.image_features(guided).cpu(),
                                 self.upper_reward.image_features(reference).cpu(), paired=True)

    def extra_summary(self, result: Mapping[str, Any]) -> dict[str, Any]:
        return {"clip_score": result["r1"], "reward": result["r2"], "prompts": self.prompts,
                "fid_features": self.upper_reward.feature_label, "reward_model": type(self.lower_reward).__name__}
