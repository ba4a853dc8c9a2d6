"""Trained models for use outside this repository: a Scenario B network and its (learned) noise schedule as a
diffusers ``DDIMPipeline`` folder (``<run dir>/diffusers``; ``docs/usage.md``, the run contract)::

    from diffusers import DDIMPipeline, DDIMScheduler
    pipe = DDIMPipeline.from_pretrained("outputs/runs/.../diffusers")         # UNet2DModel + DDIMScheduler
    scheduler = DDIMScheduler.from_pretrained("outputs/runs/.../diffusers", subfolder="scheduler")
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDIMPipeline, UNet2DModel
from torch import nn

from bilevel_diffusion.sampling.ddim import make_ddim_scheduler


def export_diffusers(model: nn.Module, betas: torch.Tensor, out: Path, clip_sample: bool = True,
                     timestep_spacing: str = "trailing") -> Path | None:
    """Save ``model``'s diffusers UNet with a DDIM scheduler carrying ``betas`` (the schedule it was trained and
    is sampled under) as a ``DDIMPipeline``; None (nothing written) for a network that is not a diffusers UNet."""
    unet = getattr(model, "unet", None)
    if not isinstance(unet, UNet2DModel):
        return None
    scheduler = make_ddim_scheduler(betas.detach(), clip_sample=clip_sample, timestep_spacing=timestep_spacing)
    DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out)
    return out
