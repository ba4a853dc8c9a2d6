"""``reward=aesthetic``: the LAION aesthetic predictor v2 (improved-aesthetic-predictor), r2 of
``task=finetune_aesthetic``: CLIP ViT-L/14 image embedding, L2-normalised, into an MLP trained to predict 1-10
ratings (checkpoint ``sac+logos+ava1-l14-linearMSE.pth``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.rewards.base import CLIP_MEAN, CLIP_STD, ImageReward, model_pixels, weights_file
from bilevel_diffusion.rewards.clip_model import image_embedding, input_size, load_clip


class AestheticMLP(nn.Module):
    """The predictor's head (its state-dict layout: ``layers.{0,2,4,6,7}``; dropouts are inactive in eval)."""

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128),
                                    nn.Dropout(0.2), nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16),
                                    nn.Linear(16, 1))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding)


class AestheticReward(ImageReward):
    """Aesthetic score (about 1-10) per image."""

    def __init__(self, checkpoint: str | Path, clip_model: str = "ViT-L/14",
                 weights_dir: str | Path = "outputs/cache/weights", url: str | None = None,
                 download: bool = True) -> None:
        super().__init__()
        path = weights_file(checkpoint, "LAION aesthetic predictor", url, download)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if "layers.0.weight" not in state:
            raise ConfigError(f"{path} is not an aesthetic-predictor state dict (no layers.0.weight)")
        self.mlp = AestheticMLP(state["layers.0.weight"].shape[1])
        self.mlp.load_state_dict(state)
        self.clip = load_clip(clip_model, weights_dir, download)
        if self.clip.visual.output_dim != state["layers.0.weight"].shape[1]:
            raise ConfigError(f"{path} expects {state['layers.0.weight'].shape[1]}-d embeddings but CLIP {clip_model} "
                              f"gives {self.clip.visual.output_dim}-d ones")
        self.requires_grad_(False).eval()

    def score(self, images: torch.Tensor, prompt: str) -> torch.Tensor:
        pixels = model_pixels(images, input_size(self.clip), CLIP_MEAN, CLIP_STD)
        return self.mlp(image_embedding(self.clip, pixels)).squeeze(-1)
