"""``reward=hps``: Human Preference Score v2 (Wu et al. 2023), r2 of ``task=finetune_hps``: an open_clip ViT-H-14
fine-tuned on human preferences; the score of an image for a prompt is the cosine of their embeddings (HPSv2's
``image_features @ text_features.T`` diagonal).

Optional dependency: ``open_clip_torch`` (not in requirements.txt). The checkpoint (``HPS_v2_compressed.pt`` or
``HPS_v2.1_compressed.pt``) is read from a local file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.rewards.base import CLIP_MEAN, CLIP_STD, ImageReward, model_pixels, weights_file


class HPSv2Reward(ImageReward):
    """HPSv2 score per image for a prompt."""

    def __init__(self, checkpoint: str | Path, model_name: str = "ViT-H-14", url: str | None = None,
                 download: bool = True) -> None:
        super().__init__()
        path = weights_file(checkpoint, "HPSv2", url, download)
        try:
            import open_clip
        except ImportError as err:
            raise ConfigError("reward=hps needs the optional package open_clip_torch: "
                              "pip install 'open_clip_torch>=2.24'") from err
        try:
            self.model = open_clip.create_model(model_name, pretrained=str(path), device="cpu")
        except (RuntimeError, KeyError, OSError) as err:
            raise ConfigError(f"{path} is not an HPSv2 {model_name} checkpoint ({type(err).__name__})") from err
        self.tokenizer = open_clip.get_tokenizer(model_name)
        size = self.model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.requires_grad_(False).eval()
        self._text: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def text_embedding(self, prompt: str) -> torch.Tensor:
        device = next(self.parameters()).device
        if prompt not in self._text or self._text[prompt].device != device:
            tokens = self.tokenizer([prompt]).to(device)
            self._text[prompt] = nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return self._text[prompt]

    def score(self, images: torch.Tensor, prompt: str) -> torch.Tensor:
        pixels = model_pixels(images, self.image_size, CLIP_MEAN, CLIP_STD)
        features = nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)
        return (features * self.text_embedding(prompt)).sum(-1)
