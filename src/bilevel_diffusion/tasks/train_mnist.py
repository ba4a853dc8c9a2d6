"""``task=train_mnist``: train an MNIST diffusion model from scratch under a fixed schedule.

This is the lower level of Scenario B (paper Alg. 3 for training, Alg. 4 for sampling) and its fixed-schedule
baseline (``schedule=linear|cosine|sigmoid``).
"""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm.auto import tqdm

from bilevel_diffusion.checkpoint import load_checkpoint, save_checkpoint
from bilevel_diffusion.evaluation import build_image_quality, report_samples
from bilevel_diffusion.runtime import RunContext


class TrainMNIST:
    """Score matching for ``lower_solver.num_steps`` steps, then DDIM samples scored by FID and IS."""

    def __init__(self, name: str = "train_mnist", log_every: int = 25, checkpoint_every: int = 500) -> None:
        self.name, self.log_every, self.checkpoint_every = name, log_every, checkpoint_every

    def run(self, cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
        data = instantiate(cfg.data)
        schedule = instantiate(cfg.schedule)
        model = instantiate(cfg.model).to(ctx.device)
        solver = instantiate(cfg.lower_solver, model=model)
        generator = torch.Generator().manual_seed(ctx.seed)
        alphas_cumprod = schedule.alphas_cumprod().detach()

        start = 0
        if ctx.resume and ctx.checkpoint_path.exists():
            state = load_checkpoint(ctx.checkpoint_path)
            solver.load_state_dict(state["solver"])
            generator.set_state(state["generator"])
            start = state["step"]
            ctx.recorder.resume_from(start, state["wall_clock_s"])

        def checkpoint(step: int) -> None:
            save_checkpoint({"solver": solver.state_dict(), "generator": generator.get_state(), "step": step,
                             "wall_clock_s": ctx.recorder.wall_clock()}, ctx.checkpoint_path)

        losses: list[float] = []
        bar = tqdm(range(start, solver.num_steps), initial=start, total=solver.num_steps, desc="score matching",
                   disable=None)
        for step in bar:
            x0, _ = data.batch(solver.batch_size, generator)
            losses.append(solver.step(x0.to(ctx.device), alphas_cumprod, generator))
            done = step + 1
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if done % self.log_every == 0 or done == solver.num_steps:
                ctx.recorder.log(done, loss=sum(losses) / len(losses), lr=solver.optimizer.param_groups[0]["lr"])
                losses.clear()
            if done % self.checkpoint_every == 0 or done == solver.num_steps:
                checkpoint(done)

        quality = build_image_quality(cfg, data.test_x, ctx)
        report = report_samples(solver.ema_model(), schedule.betas(), quality, cfg.eval, ctx, cfg.sampler)
        ctx.recorder.log(solver.num_steps, fid=report.fid, inception_score=report.inception_score)
        return {"objective": report.fid, "fid": report.fid, "is": report.inception_score,
                "is_std": report.inception_score_std, "sampler_nfe": report.sampler_nfe,
                "fid_features": quality.label, "eval_num_samples": cfg.eval.num_samples,
                "schedule": {"name": schedule.name, **schedule.as_dict()}, "train_steps": solver.num_steps,
                "num_parameters": sum(p.numel() for p in model.parameters())}
