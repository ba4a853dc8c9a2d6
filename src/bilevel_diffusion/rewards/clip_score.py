"""``reward=clip_score``: the upper objective r1 of Scenario A (paper Sec. 3.1), ``100 * max(cos(E_img, E_text), 0)``
per image with CLIP ViT-B/16 (pinned in ``configs/reward/clip_score.yaml``), differentiable in the image.

Unlike the official code, which fed CLIP [0, 1] or uint8 tensors without its preprocessing and averaged over the
batch, every image goes [-1, 1] -> [0, 1] -> CLIP's resize and centre crop -> CLIP mean/std, and gets its own score.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bilevel_diffusion.rewards.base import CLIP_MEAN, CLIP_STD, ImageReward, model_pixels
from bilevel_diffusion.rewards.clip_model import clip, image_embedding, input_size, load_clip


class ClipScore(ImageReward):
    """CLIP score of images against a prompt; also the feature network of ``fid_vs_pretrained``."""

    def __init__(self, model_name: str = "ViT-B/16", weights_dir: str | Path = "outputs/cache/weights",
                 download: bool = True) -> None:
        super().__init__()
        self.model_name = model_name
        self.clip = load_clip(model_name, weights_dir, download)
        self._text: dict[str, torch.Tensor] = {}

    @property
    def feature_label(self) -> str:
        return f"clip {self.model_name} image embedding ({self.clip.visual.output_dim}-d, L2-normalised)"

    @torch.no_grad()
    def text_embedding(self, prompt: str) -> torch.Tensor:
        """L2-normalised text embedding ``[1, D]``, computed once per prompt."""
        device = next(self.parameters()).device
        if prompt not in self._text or self._text[prompt].device != device:
            tokens = clip.tokenize([prompt], truncate=True).to(device)
            self._text[prompt] = nn.functional.normalize(self.clip.encode_text(tokens).float(), dim=-1)
        return self._text[prompt]

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``[B, D]`` of images in [-1, 1]."""
        device = next(self.parameters()).device
        pixels = model_pixels(images.to(device, torch.float32), input_size(self.clip), CLIP_MEAN, CLIP_STD)
        return image_embedding(self.clip, pixels)

    def score(self, images: torch.Tensor, prompt: str) -> torch.Tensor:
        cosine = (self.image_features(images) * self.text_embedding(prompt)).sum(-1)
        return 100 * cosine.clamp(min=0)
