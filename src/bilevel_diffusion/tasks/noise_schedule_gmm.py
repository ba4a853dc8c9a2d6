"""``task=train_gmm`` and ``task=noise_schedule_gmm``: Scenario B on the 2-D testbed (``docs/testbed.md``), where
one training takes seconds: the 25-mode Gaussian grid (``data=gaussian_grid``), an MLP eps-model
(``model=mlp_points``), FID/KID on random Fourier features and IS on the mode posteriors
(:mod:`bilevel_diffusion.metrics.point_quality`). Everything else (estimators, schedules, solver, run contract) is
that of ``train_mnist`` / ``noise_schedule_mnist``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bilevel_diffusion.data.gaussian_grid import GaussianGrid
from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.metrics.point_quality import PointQuality
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.tasks.noise_schedule_mnist import NoiseScheduleMNIST
from bilevel_diffusion.tasks.train_mnist import TrainMNIST


class _PointsQuality:
    """The testbed's evaluator; ``fid`` holds ``num_features``, ``bandwidth`` and ``seed`` of the features."""

    data: Any
    fid: Mapping[str, Any]
    evaluation: Mapping[str, Any]
    name: str

    def quality(self, ctx: RunContext) -> PointQuality:
        if not isinstance(self.data, GaussianGrid):
            raise ConfigError(f"task={self.name} needs data=gaussian_grid (got {type(self.data).__name__})")
        return PointQuality(self.data, num_features=int(self.fid["num_features"]),
                            bandwidth=float(self.fid["bandwidth"]), seed=int(self.fid["seed"]), device=ctx.device,
                            batch_size=int(self.evaluation["batch_size"]))


class TrainGMM(_PointsQuality, TrainMNIST):
    """Train the testbed's eps-model under a fixed schedule (its only upper estimator is ``fixed``)."""


class NoiseScheduleGMM(_PointsQuality, NoiseScheduleMNIST):
    """Learn the testbed's noise schedule: ``zeroth_order`` (paper Alg. 6) or a search baseline."""
