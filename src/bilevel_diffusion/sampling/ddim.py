"""Deterministic DDIM sampling (paper Alg. 4) through diffusers' ``DDIMScheduler`` built from a schedule's betas."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler
from torch import nn

from bilevel_diffusion import distributed


def make_ddim_scheduler(betas: torch.Tensor, clip_sample: bool = True,
                        timestep_spacing: str = "trailing") -> DDIMScheduler:
    """A DDIM scheduler for the given training betas (eps-prediction, eta = 0 at sampling)."""
    return DDIMScheduler(num_train_timesteps=betas.shape[0], trained_betas=betas.detach().cpu().double().numpy(),
                         clip_sample=clip_sample, set_alpha_to_one=True, timestep_spacing=timestep_spacing,
                         prediction_type="epsilon")


@torch.no_grad()
def ddim_sample(model: nn.Module, scheduler: DDIMScheduler, noise: torch.Tensor, num_inference_steps: int,
                batch_size: int = 500, device: torch.device | str = "cpu",
                progress: bool = False) -> tuple[torch.Tensor, int]:
    """Run deterministic DDIM from ``noise`` (on the CPU, so seeds mean the same everywhere).

    Returns the samples in [-1, 1] (on the CPU) and the number of network evaluations (one per image per step).
    With ``hardware=ddp`` each rank samples its shard of ``noise`` and every rank gets all samples, in order.
    """
    from tqdm.auto import tqdm

    scheduler.set_timesteps(num_inference_steps)
    model.eval()
    local = distributed.shard(noise)
    chunks = [local[:0].float()]
    starts = range(0, local.shape[0], batch_size)
    for start in tqdm(starts, desc="DDIM", disable=None if progress else True, leave=False):
        x = local[start:start + batch_size].to(device)
        for t in scheduler.timesteps:
            eps = model(x, t.to(device).expand(x.shape[0]))
            x = scheduler.step(eps, t, x, eta=0.0).prev_sample
        chunks.append(x.clamp(-1, 1).float().cpu())
    return distributed.gather(torch.cat(chunks)), noise.shape[0] * len(scheduler.timesteps)
