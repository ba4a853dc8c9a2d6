"""``task=finetune_mnist``: the CPU-scale stand-in for the Stable Diffusion experiment of Scenario A (paper Sec. 3.1).

- pre-trained model: the embedded MNIST eps-model (``task.pretrained=embedded``, the default;
  :mod:`bilevel_diffusion.pretrained_mnist`, ``docs/pretrained_mnist.md``), or one trained by the project's
  score-matching loop on the task's data (``task.pretrained=train``: ``model`` and ``task.pretrain``), cached under
  ``<cache_dir>/finetune_mnist/`` keyed by its settings;
- "prompt" = a target digit class;
- r2 (the reward being fine-tuned, the paper's synthetic reward) = log-odds of the target class under a weak proxy
  classifier; r1 (the upper objective, the paper's CLIP score) = log-probability of the target class under the
  strong CNN (:mod:`bilevel_diffusion.rewards.mnist`);
- with strong guidance (small lambda) the guided samples fool the proxy with stroke-like contrast patterns the CNN
  does not read as the digit: r2 keeps rising while r1 rises and then falls as lambda shrinks (paper Fig. 1,
  over-optimisation);
- ``fid_vs_pretrained`` / ``kid_vs_pretrained``: FID and KID (CNN features) between guided and pre-trained samples,
  averaged over prompts, on ``distance_num_samples`` per set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bilevel_diffusion import pretrained_mnist
from bilevel_diffusion.data.mnist import ImageData
from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.lower_solvers.score_matching import ScoreMatchingSolver, fit
from bilevel_diffusion.metrics.classifier import load_or_train_classifier
from bilevel_diffusion.metrics.image_quality import FeatureDrift
from bilevel_diffusion.checkpoint import load_cached, save_cached
from bilevel_diffusion.rewards.mnist import cache_key, class_log_odds, class_log_prob, load_or_train_proxy
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.schedules.family import NoiseSchedule
from bilevel_diffusion.task import RewardTask


def load_or_train_pretrained(model: Callable[[], nn.Module], schedule: NoiseSchedule, data: ImageData, steps: int,
                             batch_size: int, lr: float, cache_dir: Path, device: torch.device) -> nn.Module:
    """The pre-trained eps-model (EMA weights): trained once by score matching under ``schedule``, then cached."""
    network = model().to(device)
    settings = [getattr(model, "func", model).__name__, getattr(model, "keywords", {}), schedule.name,
                schedule.as_dict(), schedule.num_train_timesteps, list(data.train_x.shape),
                float(data.train_x.double().sum()), steps, batch_size, lr]
    path = Path(cache_dir) / "finetune_mnist" / f"pretrained_{cache_key(settings)}.safetensors"
    cached = load_cached(path)
    if cached is not None:
        network.load_state_dict(cached)
        return network.eval()
    solver = ScoreMatchingSolver(network, num_steps=steps, batch_size=batch_size, lr=lr, weight_decay=0.01)
    fit(solver, lambda n, generator: data.batch(n, generator)[0], schedule.alphas_cumprod(),
        torch.Generator().manual_seed(0), device, desc="pre-training the MNIST eps-model")
    network = solver.ema_model()
    save_cached(network.state_dict(), path, {"settings": [str(part) for part in settings]})
    return network


class FinetuneMNIST(RewardTask):
    """Scenario A on MNIST: learn lambda so that guidance by the weak proxy (r2) helps the strong CNN (r1)."""

    def __init__(self, name: str, data: ImageData, model: Callable[[], nn.Module], schedule: NoiseSchedule,
                 prompts: Sequence[int] = (3, 7), proxy_per_class: int = 20, pretrained: str = "embedded",
                 pretrain: Mapping[str, Any] | None = None, **settings: Any) -> None:
        super().__init__(name, **settings)
        if pretrained not in ("embedded", "train"):
            raise ConfigError(f"task.pretrained must be embedded or train (got {pretrained!r})")
        if pretrained == "embedded":
            trained_under = pretrained_mnist.build_schedule()
            if (schedule.name, schedule.as_dict(), schedule.num_train_timesteps) != (
                    trained_under.name, trained_under.as_dict(), trained_under.num_train_timesteps):
                raise ConfigError(f"the embedded MNIST eps-model was trained under schedule={trained_under.name} "
                                  f"{trained_under.as_dict()}; use that schedule or task.pretrained=train")
        if not prompts or not all(isinstance(p, int) and 0 <= p <= 9 for p in prompts):
            raise ConfigError(f"task.prompts must be a non-empty list of digits 0..9 (got {list(prompts)})")
        if proxy_per_class < 1:
            raise ConfigError(f"task.proxy_per_class must be >= 1 (got {proxy_per_class})")
        self.data, self.model, self.schedule = data, model, schedule
        self.prompts, self.proxy_per_class = list(prompts), int(proxy_per_class)
        self.pretrained = pretrained
        self.pretrain = {"num_steps": 3000, "batch_size": 128, "lr": 2e-3, **(pretrain or {})}

    def problem_parts(self, ctx: RunContext) -> dict[str, Any]:
        if self.pretrained == "embedded":
            model = pretrained_mnist.load(ctx.device)
        else:
            model = load_or_train_pretrained(self.model, self.schedule, self.data, int(self.pretrain["num_steps"]),
                                             int(self.pretrain["batch_size"]), float(self.pretrain["lr"]),
                                             ctx.cache_dir, ctx.device)
        model.requires_grad_(False)
        strong = load_or_train_classifier(ctx.cache_dir).to(ctx.device).requires_grad_(False)
        proxy = load_or_train_proxy(self.data, self.proxy_per_class, ctx.cache_dir).to(ctx.device)
        proxy.requires_grad_(False)
        return {"eps_fn": model, "betas": self.schedule.betas().detach(), "sample_shape": (1, 28, 28),
                "prompts": self.prompts, "r1": lambda digit: class_log_prob(strong, digit),
                "r2": lambda digit: class_log_odds(proxy, digit), "drift": FeatureDrift(ctx.cache_dir, ctx.device)}

    def extra_summary(self, result: Mapping[str, Any]) -> dict[str, Any]:
        return {"prompts": self.prompts, "pretrained": self.pretrained,
                "fid_features": "mnist_classifier (project CNN, 128-d penultimate layer)"}
