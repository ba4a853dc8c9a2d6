"""``lower_solver=score_matching``: eps-prediction score matching (paper Alg. 3) with AdamW, OneCycle and EMA, and
the project's one training loop (:func:`fit`)."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from torch import nn
from tqdm.auto import tqdm

from bilevel_diffusion import distributed, stopping
from bilevel_diffusion.checkpoint import load_checkpoint, save_checkpoint
from bilevel_diffusion.errors import ConfigError, check_policy, nonfinite
from bilevel_diffusion.tracking.recorder import Recorder


def score_matching_loss(model: nn.Module, alphas_cumprod: torch.Tensor, x0: torch.Tensor,
                        generator: torch.Generator, data_parallel: bool = False) -> torch.Tensor:
    """L_SM = E_{t, eps} || eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) - eps ||^2  (Alg. 3).

    ``alphas_cumprod`` may carry a graph back to the schedule parameters, so ``grad_q L_SM`` is exact autograd.
    ``t`` and ``eps`` are drawn on the CPU from ``generator`` (same numbers on every device).
    ``data_parallel=True`` (``hardware=ddp``): ``x0`` is the global batch; this rank's share of the global mean
    over its shard of ``x0``, ``t`` and ``eps`` (the ranks' values add up to the loss of the global batch).
    """
    num_t = alphas_cumprod.shape[0]
    batch = x0.shape[0]
    t = torch.randint(0, num_t, (batch,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    if data_parallel:
        x0, t, noise = distributed.shard(x0), distributed.shard(t), distributed.shard(noise)
    abar = alphas_cumprod.to(x0.device)[t.to(x0.device)].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    x_t = abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise
    loss = F.mse_loss(model(x_t, t.to(x0.device)).float(), noise.float())
    return loss * (x0.shape[0] / batch) if data_parallel else loss


#: ``mixed_precision`` values: the forward pass under ``torch.autocast`` in that dtype (weights, gradients, AdamW and
#: EMA stay float32; the loss is taken in float32). bf16 halves a step's time on CPUs with AVX512-BF16.
MIXED_PRECISION: dict[str | None, torch.dtype | None] = {None: None, "bf16": torch.bfloat16}


class ScoreMatchingSolver:
    """Trains ``model`` by score matching under a (fixed) schedule; keeps an EMA copy for sampling."""

    def __init__(self, model: nn.Module, num_steps: int, batch_size: int, lr: float, weight_decay: float = 0.0,
                 pct_start: float = 0.25, ema_decay: float = 0.999, grad_clip: float | None = 1.0,
                 on_nonfinite: str = "stop", mixed_precision: str | None = None) -> None:
        if lr <= 0:
            raise ConfigError(f"lower_solver.lr must be > 0 (got {lr})")
        if batch_size < 1 or num_steps < 0:
            raise ConfigError(f"lower_solver.batch_size must be >= 1 and num_steps >= 0 "
                              f"(got {batch_size}, {num_steps})")
        check_policy(on_nonfinite, "lower_solver.on_nonfinite")
        if mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"lower_solver.mixed_precision must be one of {sorted(map(str, MIXED_PRECISION))} "
                              f"(got {mixed_precision!r})")
        if not 0.0 <= ema_decay < 1.0:
            raise ConfigError(f"lower_solver.ema_decay must be in [0, 1) (got {ema_decay})")
        if num_steps > 0 and float(pct_start * num_steps) - 1 == 0:  # torch's OneCycleLR would divide by zero
            raise ConfigError(f"lower_solver.num_steps={num_steps} with pct_start={pct_start} puts the end of the "
                              f"warm-up at step 0; choose another num_steps or pct_start")
        self.model = model
        self.num_steps = int(num_steps)
        self.batch_size = int(batch_size)
        self.grad_clip = grad_clip
        self.on_nonfinite = on_nonfinite
        self.autocast_dtype = MIXED_PRECISION[mixed_precision]
        self.skipped_steps = 0
        params = list(model.parameters())
        # the fused kernel (CPU and CUDA) and foreach EMA: one call per step instead of one per tensor
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params) or None
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
        self.lr_scheduler = (torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=lr, total_steps=num_steps,
                                                                 pct_start=pct_start, anneal_strategy="cos")
                             if num_steps > 0 else None)
        self.ema = EMAModel(params, decay=ema_decay, foreach=True)
        self.step_count = 0

    def step(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor, generator: torch.Generator) -> float:
        """One AdamW step on L_SM for the batch ``x0``; returns the loss.

        A NaN/Inf loss or gradient raises :class:`NumericalFault` before any weight changes (``on_nonfinite=stop``),
        or skips the batch (``on_nonfinite=skip``; the step still counts, so schedules stay aligned). With
        ``hardware=ddp`` every rank passes the same global batch and computes its shard (see
        :mod:`bilevel_diffusion.distributed`).
        """
        self.model.train()
        with (torch.autocast(x0.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
              else contextlib.nullcontext()):
            loss = score_matching_loss(self.model, alphas_cumprod.detach(), x0, generator, data_parallel=True)
        self.optimizer.zero_grad(set_to_none=True)
        total = distributed.sum_scalar(loss.detach(), loss.device)  # the global batch's loss, on every rank
        if not math.isfinite(total):
            return self._skip_nonfinite("loss")
        loss.backward()
        distributed.sum_gradients(self.model.parameters())
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip or float("inf"))
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return self._skip_nonfinite("gradient")
        self.optimizer.step()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.ema.step(self.model.parameters())
        self.step_count += 1
        return total

    def _skip_nonfinite(self, quantity: str) -> float:
        nonfinite(self.on_nonfinite, f"score-matching {quantity}", f"step {self.step_count + 1}",
                  "lower_solver.on_nonfinite")
        self.skipped_steps += 1
        self.step_count += 1
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        return float("nan")

    def ema_model(self) -> nn.Module:
        """A copy of the network carrying the EMA weights, in eval mode."""
        averaged = copy.deepcopy(self.model).eval()
        self.ema.copy_to(averaged.parameters())
        return averaged

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler else None,
                "ema": self.ema.state_dict(), "step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.ema.load_state_dict(state["ema"])
        self.step_count = state["step_count"]


def fit(solver: ScoreMatchingSolver, next_batch: Callable[[int, torch.Generator], torch.Tensor],
        alphas_cumprod: torch.Tensor, generator: torch.Generator, device: torch.device | str = "cpu",
        recorder: Recorder | None = None, log_every: int = 0, checkpoint_path: Path | None = None,
        checkpoint_every: int = 0, resume: bool = False, desc: str = "score matching") -> ScoreMatchingSolver:
    """The project's one score-matching training loop (paper Alg. 3): ``solver.num_steps`` steps on batches
    ``next_batch(batch_size, generator)`` under a fixed schedule.

    With ``recorder`` and ``log_every > 0`` the mean loss and the learning rate are logged every ``log_every`` steps;
    with ``checkpoint_path`` the state is saved atomically every ``checkpoint_every`` steps and at the end, and
    ``resume=True`` continues from it.
    """
    alphas_cumprod = alphas_cumprod.detach()
    start, losses = 0, []  # losses since the last log line (checkpointed: log and checkpoint steps need not align)
    if checkpoint_path is not None and resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        solver.load_state_dict(state["solver"])
        generator.set_state(state["generator"])
        start, losses = state["step"], list(state.get("pending_losses", []))
        if recorder is not None:
            recorder.resume_from(start, state["wall_clock_s"], state.get("metrics_lines"))
    bar = tqdm(range(start, solver.num_steps), initial=start, total=solver.num_steps, desc=desc, disable=None)
    for step in bar:
        losses.append(solver.step(next_batch(solver.batch_size, generator).to(device), alphas_cumprod, generator))
        done = step + 1
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if recorder is not None and log_every and (done % log_every == 0 or done == solver.num_steps):
            recorder.log(done, loss=sum(losses) / len(losses), lr=solver.optimizer.param_groups[0]["lr"])
            losses.clear()
        stop = stopping.requested()
        if checkpoint_path is not None and ((checkpoint_every and done % checkpoint_every == 0)
                                            or done == solver.num_steps or stop):
            log_state = recorder.checkpoint_fields() if recorder is not None else {"wall_clock_s": 0.0}
            save_checkpoint({"solver": solver.state_dict(), "generator": generator.get_state(), "step": done,
                             "pending_losses": list(losses), **log_state}, checkpoint_path)
        if stop:
            stopping.raise_if_requested(f"after training step {done}" + (" (checkpoint saved)" if checkpoint_path
                                                                          else ""))
    return solver
