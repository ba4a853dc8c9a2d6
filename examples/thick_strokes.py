"""Your own reward: ``task=finetune_mnist`` with r2 = the mean brightness of the image (thicker strokes), so the
bilevel method learns how strongly to push for thick strokes while the strong CNN must still read the digit.

    python run.py task=finetune_mnist task._target_=examples.thick_strokes.ThickStrokes
"""

from __future__ import annotations

from typing import Any

import torch

from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.tasks.finetune_mnist import FinetuneMNIST


def brightness(images: torch.Tensor) -> torch.Tensor:
    """r2 per image: mean pixel value in [-1, 1] (differentiable, as guidance needs)."""
    return images.mean(dim=(1, 2, 3))


class ThickStrokes(FinetuneMNIST):
    """finetune_mnist with r2 replaced; r1 (the CNN's log-probability of the digit) stays the upper objective."""

    def problem_parts(self, ctx: RunContext) -> dict[str, Any]:
        parts = super().problem_parts(ctx)
        parts["r2"] = lambda digit: brightness  # one reward per prompt (digit); the same for every digit here
        return parts
