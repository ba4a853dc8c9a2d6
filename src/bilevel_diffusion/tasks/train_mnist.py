"""``task=train_mnist``: train an MNIST diffusion model from scratch under a fixed schedule.

This is the lower level of Scenario B (paper Alg. 3 for training, Alg. 4 for sampling) and its fixed-schedule
baseline (``schedule=linear|cosine|sigmoid``).
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from bilevel_diffusion.evaluation import build_image_quality, report_samples
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.tasks.fixed_schedule import report_result, train_score_model


class TrainMNIST:
    """Score matching for ``lower_solver.num_steps`` steps, then DDIM samples scored by FID and IS."""

    def __init__(self, name: str = "train_mnist", log_every: int = 25, checkpoint_every: int = 500) -> None:
        self.name, self.log_every, self.checkpoint_every = name, log_every, checkpoint_every

    def run(self, cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
        data = instantiate(cfg.data)
        schedule = instantiate(cfg.schedule)
        solver = train_score_model(cfg, ctx, data, schedule.alphas_cumprod(), self.log_every,
                                   self.checkpoint_every, ctx.checkpoint_path)
        quality = build_image_quality(cfg, data.test_x, ctx)
        report = report_samples(solver.ema_model(), schedule.betas(), quality, cfg.eval, ctx, cfg.sampler)
        ctx.recorder.log(solver.num_steps, fid=report.fid, inception_score=report.inception_score)
        return {**report_result(report, quality, cfg.eval, schedule), "train_steps": solver.num_steps,
                "num_parameters": sum(p.numel() for p in solver.model.parameters())}
