"""Training under a fixed schedule (paper Alg. 3) and the reported result of a trained model.

Shared by ``task=train_mnist`` (one run) and ``task=noise_schedule_mnist`` (one run per search trial).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm.auto import tqdm

from bilevel_diffusion.checkpoint import load_checkpoint, save_checkpoint
from bilevel_diffusion.data.mnist import ImageData
from bilevel_diffusion.evaluation import SampleReport
from bilevel_diffusion.lower_solvers.score_matching import ScoreMatchingSolver
from bilevel_diffusion.metrics.image_quality import ImageQuality
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.schedules.family import NoiseSchedule


def train_score_model(cfg: DictConfig, ctx: RunContext, data: ImageData, alphas_cumprod: torch.Tensor,
                      log_every: int = 0, checkpoint_every: int = 0, checkpoint_path: Path | None = None,
                      desc: str = "score matching") -> ScoreMatchingSolver:
    """``lower_solver.num_steps`` score-matching steps from the seed's initial weights (the same for every call).

    ``log_every > 0`` logs the mean loss and the learning rate; with ``checkpoint_path`` the state is saved
    atomically every ``checkpoint_every`` steps and at the end, and ``resume=true`` continues from it.
    """
    torch.manual_seed(ctx.seed)
    model = instantiate(cfg.model).to(ctx.device)
    solver = instantiate(cfg.lower_solver, model=model)
    generator = torch.Generator().manual_seed(ctx.seed)
    alphas_cumprod = alphas_cumprod.detach()

    start = 0
    if checkpoint_path is not None and ctx.resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        solver.load_state_dict(state["solver"])
        generator.set_state(state["generator"])
        start = state["step"]
        ctx.recorder.resume_from(start, state["wall_clock_s"])

    losses: list[float] = []
    bar = tqdm(range(start, solver.num_steps), initial=start, total=solver.num_steps, desc=desc, disable=None)
    for step in bar:
        x0, _ = data.batch(solver.batch_size, generator)
        losses.append(solver.step(x0.to(ctx.device), alphas_cumprod, generator))
        done = step + 1
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if log_every and (done % log_every == 0 or done == solver.num_steps):
            ctx.recorder.log(done, loss=sum(losses) / len(losses), lr=solver.optimizer.param_groups[0]["lr"])
            losses.clear()
        if checkpoint_path is not None and ((checkpoint_every and done % checkpoint_every == 0)
                                            or done == solver.num_steps):
            save_checkpoint({"solver": solver.state_dict(), "generator": generator.get_state(), "step": done,
                             "wall_clock_s": ctx.recorder.wall_clock()}, checkpoint_path)
    return solver


def report_result(report: SampleReport, quality: ImageQuality, eval_cfg: DictConfig,
                  schedule: NoiseSchedule) -> dict[str, Any]:
    """The reported-quality keys of ``summary.json`` (SPEC §5) for a model sampled under ``schedule``."""
    return {"objective": report.fid, "fid": report.fid, "is": report.inception_score,
            "is_std": report.inception_score_std, "sampler_nfe": report.sampler_nfe, "fid_features": quality.label,
            "eval_num_samples": eval_cfg.num_samples, "schedule": {"name": schedule.name, **schedule.as_dict()}}
