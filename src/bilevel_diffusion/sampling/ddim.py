"""Deterministic DDIM sampling (paper Alg. 4) through diffusers' ``DDIMScheduler`` built from a schedule's betas.

:func:`denoise` is the one sampling loop of the project: plain DDIM here (:func:`ddim_sample`, Scenario B and the
reported FID) and reward-guided DDIM in ``lower_solvers.guided_sampling`` (paper Alg. 5) both run it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler
from torch import nn

from bilevel_diffusion import distributed, stopping

#: eps-prediction: (x_t [B, ...], t [B]) -> eps [B, ...]
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: per-sample reward of the guided sampler (paper Alg. 5): images [B, ...] -> [B]
Reward = Callable[[torch.Tensor], torch.Tensor]
#: a diffusers scheduler of the eps-prediction ODE (DDIM with eta = 0, DPM-Solver++, PNDM)
Scheduler = DDIMScheduler | DPMSolverMultistepScheduler | PNDMScheduler


def make_ddim_scheduler(betas: torch.Tensor, clip_sample: bool = True,
                        timestep_spacing: str = "trailing") -> DDIMScheduler:
    """A DDIM scheduler for the given training betas (eps-prediction, eta = 0 at sampling)."""
    return DDIMScheduler(num_train_timesteps=betas.shape[0], trained_betas=betas.detach().cpu().double().numpy(),
                         clip_sample=clip_sample, set_alpha_to_one=True, timestep_spacing=timestep_spacing,
                         prediction_type="epsilon")


def denoise(eps_fn: EpsFn, scheduler: Scheduler, x: torch.Tensor, num_steps: int,
            use_clipped_model_output: bool = False) -> torch.Tensor:
    """Integrate from ``x = x_T`` to ``x_0`` with ``num_steps`` steps of ``scheduler`` (no final clamp).

    ``eps_fn`` runs without autograd unless it enables it itself (the guided eps of Alg. 5 does).
    ``use_clipped_model_output``: a clipping DDIM step re-derives eps from its clipped x0 estimate.
    """
    scheduler.set_timesteps(num_steps)
    step_kwargs = {"use_clipped_model_output": True} if use_clipped_model_output else {}
    for t in scheduler.timesteps:
        with torch.no_grad():
            eps = eps_fn(x, t.to(x.device).expand(x.shape[0]))
        x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
    return x


@torch.no_grad()
def ddim_sample(model: nn.Module, scheduler: DDIMScheduler, noise: torch.Tensor, num_inference_steps: int,
                batch_size: int = 500, device: torch.device | str = "cpu",
                progress: bool = False) -> tuple[torch.Tensor, int]:
    """Run deterministic DDIM from ``noise`` (on the CPU, so seeds mean the same everywhere).

    Returns the samples in [-1, 1] (on the CPU) and the number of network evaluations (one per image per step).
    With ``hardware=ddp`` each rank samples its shard of ``noise`` and every rank gets all samples, in order.
    """
    from tqdm.auto import tqdm

    model.eval()
    local = distributed.shard(noise)
    chunks = [local[:0].float()]
    starts = range(0, local.shape[0], batch_size)
    for start in tqdm(starts, desc="DDIM", disable=None if progress else True, leave=False):
        stopping.raise_in_one_process("while sampling (the last checkpoint is kept; resume=true samples again)")
        x = denoise(model, scheduler, local[start:start + batch_size].to(device), num_inference_steps)
        chunks.append(x.clamp(-1, 1).float().cpu())
    return distributed.gather(torch.cat(chunks)), noise.shape[0] * num_inference_steps


#: below this alpha-bar a differentiable DDIM step passes no gradient through its x0 estimate (see
#: :func:`ddim_differentiable`); with a schedule that reaches pure noise only the first step is affected
DETACH_X0_BELOW = 1e-3


def ddim_differentiable(eps_fn: EpsFn, scheduler: DDIMScheduler, noise: torch.Tensor, num_inference_steps: int,
                        detach_x0_below: float = DETACH_X0_BELOW) -> torch.Tensor:
    """Deterministic DDIM (eta = 0; the same values as :func:`ddim_sample`'s ``DDIMScheduler.step``) with autograd
    through every step, for the first-order theta_z gradient of paper Alg. 6 (``docs/method.md``)::

        x0_hat = clip((x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t))
        x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps

    Where ``abar_t < detach_x0_below`` (the first step from pure noise: abar_999 = 2.4e-9 for the cosine), x0_hat
    multiplies the network's error by 1/sqrt(abar_t) ~ 2e4 and the clip zeroes it for all but a few samples, so its
    gradient is a handful of huge terms that do not average out (on the testbed, uncut 500-sample gradients have
    cosine -0.23 to 0.94 with a high-sample reference; ``docs/method.md``). There x0_hat passes no gradient to the
    network; eps keeps its gradient through the second term; ``detach_x0_below=0`` keeps every term. The values are
    unchanged. Returns the samples (not clamped)."""
    scheduler.set_timesteps(num_inference_steps)
    alphas_cumprod = scheduler.alphas_cumprod.to(noise.device, noise.dtype)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=noise.dtype, device=noise.device)
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    x = noise
    for t in scheduler.timesteps:
        abar, prev = alphas_cumprod[t], int(t) - stride
        abar_prev = alphas_cumprod[prev] if prev >= 0 else final
        eps = eps_fn(x, t.to(x.device).expand(x.shape[0]))
        eps_x0 = eps.detach() if float(abar) < detach_x0_below else eps
        x0 = (x - (1 - abar).sqrt() * eps_x0) / abar.sqrt()
        if scheduler.config.clip_sample:
            x0 = x0.clamp(-scheduler.config.clip_sample_range, scheduler.config.clip_sample_range)
        x = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps
    return x
