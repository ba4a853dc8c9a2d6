"""``task=train_mnist``: train an MNIST diffusion model from scratch under a fixed schedule.

This is the lower level of Scenario B (paper Alg. 3 for training, Alg. 4 for sampling) and its fixed-schedule
baseline (``schedule=linear|cosine|sigmoid``); its only upper estimator is ``fixed``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from bilevel_diffusion.data.mnist import ImageData
from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.evaluation import build_image_quality
from bilevel_diffusion.lower_solvers.score_matching import ScoreMatchingSolver
from bilevel_diffusion.metrics.image_quality import ImageQuality
from bilevel_diffusion.problems.schedule import ScheduleProblem
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.schedules.family import NoiseSchedule
from bilevel_diffusion.task import Task
from bilevel_diffusion.upper_estimators.base import UpperEstimator
from bilevel_diffusion.upper_estimators.fixed import Fixed


class TrainMNIST(Task):
    """Score matching for ``lower_solver.num_steps`` steps, then DDIM samples scored by FID and IS."""

    accepts = (Fixed,)
    solvers = (ScoreMatchingSolver,)
    headline = ("fid", "kid", "is", "eval_num_samples")

    def __init__(self, name: str, data: ImageData, model: Callable[[], nn.Module], schedule: NoiseSchedule,
                 lower_solver: Callable[..., ScoreMatchingSolver], evaluation: Mapping[str, Any],
                 sampler: Mapping[str, Any], fid: Mapping[str, Any], log_every: int = 25,
                 checkpoint_every: int = 500) -> None:
        super().__init__(name)
        batch_size = int(getattr(lower_solver, "keywords", {}).get("batch_size", 1))
        if batch_size > data.train_x.shape[0]:
            raise ConfigError(f"lower_solver.batch_size={batch_size:,} exceeds the {data.train_x.shape[0]:,} training "
                              f"images of the data")
        self.data, self.model, self.schedule, self.lower_solver = data, model, schedule, lower_solver
        self.evaluation, self.sampler, self.fid = evaluation, sampler, fid
        self.log_every, self.checkpoint_every = int(log_every), int(checkpoint_every)

    def quality(self, ctx: RunContext) -> ImageQuality:
        """The reported-FID evaluator (``metrics.fid``) against the held-out images."""
        return build_image_quality(self.data.test_x, self.fid, ctx.cache_dir, ctx.device,
                                   int(self.evaluation["batch_size"]))

    def problem(self, ctx: RunContext) -> ScheduleProblem:
        return ScheduleProblem(name=self.name, data=self.data, model=self.model, schedule=self.schedule,
                               lower_solver=self.lower_solver, quality=self.quality(ctx), evaluation=self.evaluation,
                               sampler=self.sampler, ctx=ctx, log_every=self.log_every,
                               checkpoint_every=self.checkpoint_every)

    def run(self, estimator: UpperEstimator, ctx: RunContext) -> dict[str, Any]:
        return estimator.solve(self.problem(ctx), ctx)
