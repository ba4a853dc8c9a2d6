"""``reward=synthetic``: the paper's synthetic reward r2 (after RCGDM): ImageNet ResNet-18 features into a randomly
initialised ``Linear(512, 1)`` head.

The official code created the head unseeded, so r2 differed on every machine. Here it is drawn from a CPU
generator seeded by ``head_seed`` (nn.Linear's default law, U(-1/sqrt(512), 1/sqrt(512))) and saved once as
safetensors at ``head``; an existing file is always reused, so copying it carries r2 to another machine.
Preprocessing: ImageNet's (the official code used CLIP's mean/std; configurable).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file
from torch import nn
from torchvision.models import ResNet18_Weights
from torchvision.transforms import InterpolationMode

from bilevel_diffusion.checkpoint import save_safetensors_atomic
from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.rewards.base import ImageReward, model_pixels, weights_file

FEATURES = 512


def seeded_head(seed: int) -> dict[str, torch.Tensor]:
    """The head's weight and bias, U(-1/sqrt(512), 1/sqrt(512)) from a CPU generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(int(seed))
    bound = 1 / math.sqrt(FEATURES)
    weight = (torch.rand(1, FEATURES, generator=generator, dtype=torch.float32) * 2 - 1) * bound
    bias = (torch.rand(1, generator=generator, dtype=torch.float32) * 2 - 1) * bound
    return {"weight": weight, "bias": bias}


def load_or_make_head(path: str | Path, seed: int) -> nn.Linear:
    """The saved head at ``path``; made from ``seed`` and saved there first when absent."""
    path = Path(path)
    if not path.is_file():
        save_safetensors_atomic(seeded_head(seed), path, metadata={"seed": str(seed)})
    head = nn.Linear(FEATURES, 1)
    try:
        head.load_state_dict(load_file(str(path)))
    except (RuntimeError, OSError) as err:
        raise ConfigError(f"{path} is not a Linear({FEATURES}, 1) head ({type(err).__name__}); delete it to "
                          f"redraw it from the seed") from err
    return head


class SyntheticReward(ImageReward):
    """``head(resnet18_features(x))`` per image."""

    def __init__(self, backbone: str | Path, head: str | Path, head_seed: int = 0, download: bool = True,
                 image_size: int = 224, mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225)) -> None:
        super().__init__()
        url = ResNet18_Weights.IMAGENET1K_V1.url
        cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        path = weights_file(backbone, "ImageNet ResNet-18 (torchvision IMAGENET1K_V1)", url, download, also=[cached])
        self.net = torchvision.models.resnet18()
        try:
            self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except (RuntimeError, OSError) as err:
            raise ConfigError(f"{path} is not a torchvision ResNet-18 state dict ({type(err).__name__})") from err
        self.net.fc = load_or_make_head(head, head_seed)
        self.image_size, self.mean, self.std = int(image_size), tuple(mean), tuple(std)
        self.requires_grad_(False).eval()

    def score(self, images: torch.Tensor, prompt: str) -> torch.Tensor:
        pixels = model_pixels(images, self.image_size, self.mean, self.std, InterpolationMode.BILINEAR)
        return self.net(pixels).squeeze(-1)
