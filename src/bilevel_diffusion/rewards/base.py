"""The reward interface of Scenario A (``docs/method.md``) and what every reward model shares: pixel preprocessing and
locating weight files.

A reward maps images in [-1, 1] (``[B, 3, H, W]``, any device) and a prompt to one value per image (``[B]``, on the
images' device), differentiably, so the guided sampler (paper Alg. 5) can take its gradient. Rewards that ignore
the prompt (aesthetic, synthetic) accept it all the same, so every reward is used as ``reward.for_prompt(p)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from torch import nn
from torchvision.transforms import InterpolationMode

from bilevel_diffusion.errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageReward(nn.Module):
    """``r(images, prompt) -> [B]``; subclasses implement :meth:`score` on preprocessed float32 input."""

    def score(self, images: torch.Tensor, prompt: str) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, images: torch.Tensor, prompt: str = "") -> torch.Tensor:
        device = next(self.parameters()).device
        return self.score(images.to(device, torch.float32), prompt).float().to(images.device)

    def for_prompt(self, prompt: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """The per-sample reward of one prompt, as the guided sampler takes it."""
        return partial(self.__call__, prompt=prompt)


def model_pixels(images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float],
                 interpolation: InterpolationMode = InterpolationMode.BICUBIC) -> torch.Tensor:
    """[-1, 1] -> [0, 1] (clamped, as the saved image) -> shorter side resized to ``size`` (antialiased) -> centre
    crop ``size`` x ``size`` -> ``(x - mean) / std``: the vision models' own preprocessing, differentiable."""
    x = (images.clamp(-1, 1) + 1) / 2
    x = TF.center_crop(TF.resize(x, [size], interpolation=interpolation, antialias=True), [size, size])
    return TF.normalize(x, list(mean), list(std))


def offline() -> bool:
    """``HF_HUB_OFFLINE=1`` also turns off the reward models' downloads."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def weights_file(path: str | Path, what: str, url: str | None = None, download: bool = True,
                 also: Sequence[Path] = ()) -> Path:
    """``path`` if it is a file (else the first existing file in ``also``); else download ``url`` to ``path`` when
    ``download`` and online; else one clear :class:`ConfigError` saying what is needed and where."""
    path = Path(path)
    for candidate in (path, *also):
        if candidate.is_file():
            return candidate
    if url and download and not offline():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path), progress=False)
            return path
        except OSError as err:
            reason = f"download from {url} failed: {err}"
    else:
        reason = "downloads are off" if url else "no download URL is configured"
    raise ConfigError(f"{what} weights not found at {path} ({reason}); put the file there"
                      + (f" (from {url})" if url else ""))
