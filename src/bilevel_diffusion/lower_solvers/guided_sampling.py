"""``lower_solver=guided_sampling``: the inference-only lower-level solver of Scenario A (paper Alg. 5).

The lower problem ``p_lambda = argmin_p -E_p[r(u)] + lambda KL(p || p_pre)`` has the closed form
``p_lambda ∝ p_pre exp(r / lambda)``. It is sampled by look-ahead gradient guidance on a pre-trained eps-model
(``docs/method.md``): at each DDIM step ``t``

    eps    = eps_theta(x_t, t)                                  (with classifier-free guidance if configured)
    x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)          (Tweedie's estimate)
    G      = grad_{x_t} r(decode(x0_hat))                         (per sample: r returns one value per sample)
    eps   <- eps - sqrt(1 - abar_t) G / lambda

then diffusers' ``DDIMScheduler.step``. For a Gaussian data distribution and a linear reward this is exact: the
samples have mean ``mu + Sigma a / lambda`` (``docs/method.md``). ``decode`` maps the Tweedie estimate to image
space (a VAE decoder for latent models; identity for pixel models). ``relinearize_rounds = K > 0`` is the official
code's variant (GGDM Alg. 1): sample unguided from fixed noise, then K times replace ``r`` by its linearisation at
the previous round's output and sample again from the *same* noise.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler
from torch import nn

from bilevel_diffusion import stopping
from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.sampling.ddim import EpsFn, Reward, Scheduler, denoise, make_ddim_scheduler


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class LinearisedReward:
    """``r(x) ≈ r(x_ref) + <grad r(x_ref), x - x_ref>`` per sample (one re-linearisation round of GGDM Alg. 1)."""

    def __init__(self, reward: Reward, x_ref: torch.Tensor) -> None:
        x_ref = x_ref.detach().requires_grad_(True)
        with torch.enable_grad():
            value = reward(x_ref)
            (grad,) = torch.autograd.grad(value.sum(), x_ref)
        self.x_ref, self.value, self.grad = x_ref.detach(), value.detach(), grad.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.value + ((x - self.x_ref) * self.grad).flatten(1).sum(1)


#: a backward pass through the network costs about two forward passes
BACKWARD_COST = 2


@dataclass
class GuidedSamples:
    images: torch.Tensor  # decoded samples, on the CPU
    nfe: int              # network evaluations (forward passes, one per image per step and branch)
    cost: int = 0         # forward-pass equivalents: a guided pass adds a backward pass (BACKWARD_COST) per step


class GuidedSampler:
    """Guided deterministic sampling (Alg. 5 with Alg. 4's sampler); ``lam = None`` or no reward: unguided.

    ``clip_sample``: the data live in [-1, 1] (pixel models): DDIM clips its x0 estimate and re-derives eps from the
    clipped x0 (``use_clipped_model_output``: otherwise the guidance shift that the clip removed from x0 stays in
    eps, the "direction to x_t" term of the DDIM update carries it as a huge noise-like pattern, and at small lambda
    the samples turn into noise whose reward *falls*), the reward sees the Tweedie estimate clamped to [-1, 1]
    (without it, an imperfect model's x0_hat at high noise is far outside the image range and strong guidance blows
    up) and the output is clamped.
    ``scheduler``: ``ddim`` (deterministic DDIM, paper Alg. 4) or ``dpm_solver`` (diffusers' DPM-Solver++ 2M, a
    second-order solver of the same ODE: far smaller discretisation error at equal steps) or ``pndm`` (PLMS with
    ``skip_prk_steps``, Stable Diffusion v1.5's default and the official code's sampler; ``num_steps + 1`` passes).
    Classifier-free guidance: pass ``models.stable_diffusion.ClassifierFreeGuidance`` as ``eps_fn`` (and its
    ``nfe_per_sample``).

    ``float64_below``: steps whose ``abar_t`` is below this form x0_hat and its derivative in float64 (a float64 copy
    of an ``nn.Module`` eps-model; the reward and the sampler stay in the samples' dtype). Near pure noise x0_hat
    depends on x_t only through ``I - sqrt(1 - abar) d eps/d x_t``, which is O(abar): in float32 ``1 - abar`` rounds
    to 1 once abar < 6e-8 and the derivative is off by ~1.2e-7 / abar in general, so the guidance of the first step
    of a cosine schedule (abar_999 = 2.4e-9), which carries the whole tilt into x0_hat, would be lost
    (``docs/method.md``, the guided sampler). 0 turns this off.
    """

    def __init__(self, num_steps: int = 50, batch_size: int = 256, clip_sample: bool = True,
                 timestep_spacing: str = "trailing", relinearize_rounds: int = 0, scheduler: str = "ddim",
                 float64_below: float = 1e-3) -> None:
        if num_steps < 1 or batch_size < 1:
            raise ConfigError(f"lower_solver.num_steps and batch_size must be >= 1 "
                              f"(got {num_steps}, {batch_size})")
        if relinearize_rounds < 0:
            raise ConfigError(f"lower_solver.relinearize_rounds must be >= 0 (got {relinearize_rounds})")
        self.num_steps, self.batch_size = int(num_steps), int(batch_size)
        self.clip_sample, self.timestep_spacing = bool(clip_sample), timestep_spacing
        if scheduler not in ("ddim", "dpm_solver", "pndm"):
            raise ConfigError(f"lower_solver.scheduler must be ddim, dpm_solver or pndm (got {scheduler!r})")
        if not 0 <= float64_below < 1:
            raise ConfigError(f"lower_solver.float64_below must be in [0, 1) (got {float64_below})")
        self.relinearize_rounds, self.scheduler_name = int(relinearize_rounds), scheduler
        self.float64_below = float(float64_below)
        self._float64_copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def scheduler(self, betas: torch.Tensor) -> Scheduler:
        """diffusers' DDIM (eta = 0), DPM-Solver++(2M) or PNDM for the model's training betas (eps-prediction)."""
        common = {"num_train_timesteps": betas.shape[0], "trained_betas": betas.detach().cpu().double().numpy(),
                  "timestep_spacing": self.timestep_spacing, "prediction_type": "epsilon"}
        if self.scheduler_name == "dpm_solver":
            return DPMSolverMultistepScheduler(**common, solver_order=2, thresholding=False, final_sigmas_type="zero")
        if self.scheduler_name == "pndm":
            return PNDMScheduler(**common, skip_prk_steps=True, set_alpha_to_one=False)
        return make_ddim_scheduler(betas, self.clip_sample, self.timestep_spacing)

    def sample(self, eps_fn: EpsFn, betas: torch.Tensor, noise: torch.Tensor, reward: Reward | None = None,
               lam: float | None = None, decode: Callable[[torch.Tensor], torch.Tensor] = _identity,
               nfe_per_sample: int = 1, device: torch.device | str = "cpu") -> GuidedSamples:
        """Samples of ``p_pre exp(reward / lam)`` from ``noise`` (CPU tensor), in batches of ``batch_size``."""
        if lam is not None and not lam > 0:
            raise ConfigError(f"the KL strength lambda must be > 0 (got {lam})")
        scheduler = self.scheduler(betas)
        chunks, nfe, cost = [], 0, 0
        for start in range(0, noise.shape[0], self.batch_size):
            stopping.raise_in_one_process("while sampling (the last checkpoint is kept; resume=true samples again)")
            x_T = noise[start:start + self.batch_size].to(device)
            rounds = self.relinearize_rounds if reward is not None and lam is not None else 0
            x0 = self._ddim(eps_fn, scheduler, x_T, reward if rounds == 0 else None, lam, decode, betas)
            for _ in range(rounds):
                x0 = self._ddim(eps_fn, scheduler, x_T, LinearisedReward(reward, decode(x0)), lam, decode, betas)
            per_pass = x_T.shape[0] * len(scheduler.timesteps) * nfe_per_sample
            guided_passes = (rounds or 1) if reward is not None and lam is not None else 0
            nfe += per_pass * (rounds + 1)
            cost += per_pass * (rounds + 1 + BACKWARD_COST * guided_passes)
            chunks.append(decode(x0).detach().cpu())
        return GuidedSamples(torch.cat(chunks), nfe, cost)

    def _ddim(self, eps_fn: EpsFn, scheduler: Scheduler, x: torch.Tensor, reward: Reward | None,
              lam: float | None, decode: Callable[[torch.Tensor], torch.Tensor], betas: torch.Tensor) -> torch.Tensor:
        """One sampling pass; the look-ahead guidance shift is applied when ``reward`` and ``lam`` are given."""
        clipped = self.clip_sample and isinstance(scheduler, DDIMScheduler)
        if reward is not None and lam is not None:
            eps_fn = self._guided(eps_fn, scheduler, reward, lam, decode, betas)
        x = denoise(eps_fn, scheduler, x, self.num_steps, use_clipped_model_output=clipped)
        return x.clamp(-1, 1) if self.clip_sample else x

    def _float64(self, eps_fn: EpsFn) -> EpsFn:
        """A float64 copy of an ``nn.Module`` eps-model (made once); other callables are used as they are."""
        if not isinstance(eps_fn, nn.Module):
            return eps_fn
        if eps_fn not in self._float64_copies:
            self._float64_copies[eps_fn] = copy.deepcopy(eps_fn).double()
        return self._float64_copies[eps_fn]

    def _guided(self, eps_fn: EpsFn, scheduler: Scheduler, reward: Reward, lam: float,
                decode: Callable[[torch.Tensor], torch.Tensor], betas: torch.Tensor) -> EpsFn:
        """The guided eps of Alg. 5: ``eps - sqrt(1 - abar_t) grad_{x_t} r(decode(x0_hat)) / lambda``."""
        abar64 = torch.cumprod(1 - betas.detach().double().cpu(), dim=0)

        def guided_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if float(abar64[int(t[0])]) < self.float64_below and x.dtype != torch.float64:
                return precise_eps(x, t)
            x_in = x.detach().requires_grad_(True)
            with torch.enable_grad():
                eps = eps_fn(x_in, t)
                abar = scheduler.alphas_cumprod[int(t[0])].to(x.device, x.dtype)
                x0_hat = (x_in - (1 - abar).sqrt() * eps) / abar.sqrt()
                if self.clip_sample:  # the reward sees a valid image; saturated pixels get no gradient
                    x0_hat = x0_hat.clamp(-1, 1)
                (grad,) = torch.autograd.grad(reward(decode(x0_hat)).sum(), x_in)
            return eps.detach() - (1 - abar).sqrt() * grad / lam

        def precise_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            """The same in float64: x0_hat and its vector-Jacobian product; r's gradient in x's dtype."""
            x_in = x.detach().double().requires_grad_(True)
            abar = abar64[int(t[0])].to(x.device)
            with torch.enable_grad():
                eps = self._float64(eps_fn)(x_in, t)
                x0_hat = (x_in - (1 - abar).sqrt() * eps) / abar.sqrt()
                if self.clip_sample:
                    x0_hat = x0_hat.clamp(-1, 1)
                x0_low = x0_hat.detach().to(x.dtype).requires_grad_(True)
                (grad_x0,) = torch.autograd.grad(reward(decode(x0_low)).sum(), x0_low)
                (grad,) = torch.autograd.grad(x0_hat, x_in, grad_outputs=grad_x0.double())
            return (eps.detach() - (1 - abar).sqrt() * grad / lam).to(x.dtype)

        return guided_eps
