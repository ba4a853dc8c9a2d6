"""Reported sample quality of an eps-model: DDIM samples from fixed noise, FID, KID and IS, and a sample
grid."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bilevel_diffusion.metrics.image_quality import ImageQuality
from bilevel_diffusion.reporting.figures import plot_points
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.sampling.ddim import ddim_sample, make_ddim_scheduler
from bilevel_diffusion.tracking.recorder import Recorder


@dataclass
class SampleReport:
    images: torch.Tensor
    fid: float
    kid: float
    inception_score: float
    inception_score_std: float
    sampler_nfe: int


def build_image_quality(real: torch.Tensor, fid: Mapping[str, Any], cache_dir: Path, device: torch.device,
                        batch_size: int = 500) -> ImageQuality:
    """The reported-FID evaluator against the held-out real images; ``fid`` holds ``metrics.fid``'s ``features``
    and ``inception_path``."""
    return ImageQuality(real, features=fid["features"], cache_dir=cache_dir, inception_path=fid.get("inception_path"),
                        device=device, batch_size=batch_size)


def fixed_noise(num_samples: int, seed: int, shape: tuple[int, ...] = (1, 28, 28)) -> torch.Tensor:
    """Initial DDIM noise from a fixed seed (CPU), so every method is judged on the same noise."""
    return torch.randn((num_samples, *shape), generator=torch.Generator().manual_seed(seed))


def save_samples(recorder: Recorder, name: str, samples: torch.Tensor) -> Path:
    """``<run dir>/<name>.png``: a grid of images, or a scatter plot of points ``[N, 2]``."""
    if samples.dim() == 2:
        path = plot_points(samples, recorder.run_dir / f"{name}.png")
        recorder.log_file_image(name, path)
        return path
    return recorder.save_images(name, samples)


def report_samples(model: nn.Module, betas: torch.Tensor, quality: ImageQuality, evaluation: Mapping[str, Any],
                   ctx: RunContext, clip_sample: bool = True, timestep_spacing: str = "trailing",
                   grid_name: str = "samples", sample_shape: tuple[int, ...] = (1, 28, 28)) -> SampleReport:
    """Sample ``evaluation["num_samples"]`` samples of ``sample_shape`` with DDIM from the noise of
    ``evaluation["seed"]``, score them and save a grid (images) or scatter plot (points) of the first
    ``evaluation["grid_size"]``."""
    scheduler = make_ddim_scheduler(betas, clip_sample=clip_sample, timestep_spacing=timestep_spacing)
    noise = fixed_noise(int(evaluation["num_samples"]), int(evaluation["seed"]), sample_shape)
    images, nfe = ddim_sample(model, scheduler, noise,
                              int(evaluation["num_inference_steps"]), int(evaluation["batch_size"]), ctx.device,
                              progress=True)
    save_samples(ctx.recorder, grid_name, images[:int(evaluation["grid_size"])])
    is_mean, is_std = quality.inception_score(images)
    return SampleReport(images, quality.fid_score(images), quality.kid_score(images), is_mean, is_std, nfe)
