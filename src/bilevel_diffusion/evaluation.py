"""Reported sample quality of an eps-model: DDIM samples from fixed noise, FID and IS, and a sample grid."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn

from bilevel_diffusion.metrics.image_quality import ImageQuality
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.sampling.ddim import ddim_sample, make_ddim_scheduler


@dataclass
class SampleReport:
    images: torch.Tensor
    fid: float
    inception_score: float
    inception_score_std: float
    sampler_nfe: int


def build_image_quality(cfg: DictConfig, real: torch.Tensor, ctx: RunContext) -> ImageQuality:
    """The reported-FID evaluator (``metrics.fid``) against the held-out real images."""
    return ImageQuality(real, features=cfg.metrics.fid.features, cache_dir=ctx.cache_dir,
                        inception_path=cfg.metrics.fid.get("inception_path"), device=ctx.device,
                        batch_size=cfg.eval.batch_size)


def fixed_noise(num_samples: int, seed: int, shape: tuple[int, ...] = (1, 28, 28)) -> torch.Tensor:
    """Initial DDIM noise from a fixed seed (CPU), so every method is judged on the same noise."""
    return torch.randn((num_samples, *shape), generator=torch.Generator().manual_seed(seed))


def report_samples(model: nn.Module, betas: torch.Tensor, quality: ImageQuality, eval_cfg: DictConfig,
                   ctx: RunContext, sampler_cfg: DictConfig, grid_name: str = "samples") -> SampleReport:
    """Sample ``eval.num_samples`` images with DDIM, score them and save a grid of the first ``eval.grid_size``."""
    scheduler = make_ddim_scheduler(betas, clip_sample=sampler_cfg.clip_sample,
                                    timestep_spacing=sampler_cfg.timestep_spacing)
    images, nfe = ddim_sample(model, scheduler, fixed_noise(eval_cfg.num_samples, eval_cfg.seed),
                              eval_cfg.num_inference_steps, eval_cfg.batch_size, ctx.device, progress=True)
    ctx.recorder.save_images(grid_name, images[:eval_cfg.grid_size])
    is_mean, is_std = quality.inception_score(images)
    return SampleReport(images, quality.fid_score(images), is_mean, is_std, nfe)
