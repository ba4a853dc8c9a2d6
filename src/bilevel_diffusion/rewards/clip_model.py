"""OpenAI CLIP through clip-anytorch, loaded from a local weights folder (the reward models' vision towers)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.rewards.base import weights_file

with warnings.catch_warnings():  # clip-anytorch imports pkg_resources
    warnings.simplefilter("ignore")
    import clip
    from clip.clip import _MODELS as CLIP_URLS


def load_clip(name: str, weights_dir: str | Path, download: bool = True) -> nn.Module:
    """CLIP ``name`` (e.g. ``ViT-B/16``) from ``<weights_dir>/<its file name>`` (``ViT-B-16.pt``, as clip-anytorch
    names it), downloaded there first when missing and allowed; frozen, float32, on the CPU."""
    if name not in CLIP_URLS:
        raise ConfigError(f"unknown CLIP model {name!r}; choose one of {sorted(CLIP_URLS)}")
    url = CLIP_URLS[name]
    path = weights_file(Path(weights_dir) / url.rsplit("/", 1)[-1], f"CLIP {name}", url, download)
    try:
        with warnings.catch_warnings():  # it tries torch.jit.load first (OpenAI's files are TorchScript archives)
            warnings.simplefilter("ignore", FutureWarning)
            model, _ = clip.load(str(path), device="cpu", jit=False)
    except (RuntimeError, KeyError, OSError) as err:
        raise ConfigError(f"{path} is not a CLIP {name} checkpoint ({type(err).__name__}: {err})") from err
    return model.float().eval().requires_grad_(False)


def image_embedding(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """L2-normalised CLIP image embedding of preprocessed pixels."""
    return nn.functional.normalize(model.encode_image(pixels).float(), dim=-1)


def input_size(model: nn.Module) -> int:
    return int(model.visual.input_resolution)
