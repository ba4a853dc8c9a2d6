"""Projected Adam for the schedule parameters q (the q-update of paper Alg. 6), in box-normalised coordinates."""

from __future__ import annotations

import torch

from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.schedules.family import NoiseSchedule


class BoxAdam:
    """Adam on ``u = (q - lo) / (hi - lo)``, then ``q <- Proj_Q(lo + (hi - lo) u)`` after every step.

    One learning rate then moves every parameter by the same fraction of its box (the official code needed four
    hand-set rates). The rate decays to zero by a cosine over ``total_steps``. ``width`` is also the right
    per-coordinate scale for zeroth-order smoothing in the same coordinates.
    """

    def __init__(self, schedule: NoiseSchedule, lr: float, total_steps: int) -> None:
        missing = [name for name in schedule.param_names if name not in schedule.bounds]
        if missing:
            raise ConfigError(f"a learned schedule needs schedule.bounds for every parameter; missing {missing}")
        lo = torch.tensor([schedule.bounds[n][0] for n in schedule.param_names], dtype=torch.float64)
        hi = torch.tensor([schedule.bounds[n][1] for n in schedule.param_names], dtype=torch.float64)
        if not bool((hi > lo).all()):
            raise ConfigError(f"schedule.bounds must have low < high for every parameter (got {schedule.bounds})")
        self.schedule, self.lo, self.width = schedule, lo, hi - lo
        self.u = torch.nn.Parameter(self._normalised())
        self.optimizer = torch.optim.Adam([self.u], lr=lr)
        self.lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, total_steps))

    def _normalised(self) -> torch.Tensor:
        return (self.schedule.raw.detach() - self.lo) / self.width

    def step(self, grad_q: torch.Tensor) -> None:
        """One Adam step along ``-grad_q`` (the gradient in the schedule's own coordinates), then the projection."""
        self.u.grad = grad_q.detach().to(self.u) * self.width
        self.optimizer.step()
        self.lr_scheduler.step()
        with torch.no_grad():
            self.schedule.raw.copy_(self.lo + self.width * self.u)
            self.schedule.project_()
            self.u.copy_(self._normalised())

    def state_dict(self) -> dict:
        return {"u": self.u.detach().clone(), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.u.copy_(state["u"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
