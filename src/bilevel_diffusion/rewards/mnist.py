"""Rewards of ``task=finetune_mnist`` (the CPU-scale stand-in for the Stable Diffusion experiment).

- r2, the reward being fine-tuned: the log-odds of the target digit under a deliberately weak *proxy*
  (:class:`EdgeProxy`, a softmax classifier linear in the image's horizontal and vertical pixel differences,
  trained on a few images per class);
- r1, the upper objective: the log-probability of the target digit under the strong CNN of
  :mod:`bilevel_diffusion.metrics.classifier` (a different model).

Why this proxy: a linear softmax on raw pixels, scored by its log-probability, was tried first. Its gradient is a
template of the digit, so strong guidance draws clean digits that the CNN also likes, and the log-probability
saturates at 0. Pixel *differences* reward edges where the target's strokes have them (which high-contrast patterns
satisfy without forming the digit), and the unbounded log-odds can always be pushed further, like the paper's
aesthetic score. See ``docs/method.md`` (Scenario A on MNIST).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bilevel_diffusion.checkpoint import load_cached, save_cached
from bilevel_diffusion.data.mnist import ImageData
from bilevel_diffusion.metrics.classifier import accuracy

#: per-sample reward: images [B, 1, 28, 28] -> [B]
PixelReward = Callable[[torch.Tensor], torch.Tensor]


def cache_key(*parts: Any) -> str:
    """A short content hash of ``parts`` (JSON), for cache file names."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]




class EdgeProxy(nn.Module):
    """The weak proxy reward model: softmax regression on the 2 x 28 x 27 horizontal and vertical pixel differences."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * 28 * 27, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dx, dy = x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]
        return self.linear(torch.cat([dx.flatten(1), dy.flatten(1)], dim=1))


def load_or_train_proxy(data: ImageData, per_class: int, cache_dir: Path) -> EdgeProxy:
    """Train the proxy on ``per_class`` training images of each digit (full batch, Adam), once; then cached.
    Reproducible: its initial weights and training use their own seed, not the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        proxy = EdgeProxy()
    path = Path(cache_dir) / "finetune_mnist" / f"proxy_{cache_key('pixel_differences', per_class)}.safetensors"
    cached = load_cached(path)
    if cached is not None:
        proxy.load_state_dict(cached)
        return proxy.eval()
    generator = torch.Generator().manual_seed(0)
    idx = torch.cat([torch.nonzero(data.train_y == c).flatten()[torch.randperm(int((data.train_y == c).sum()),
                                                                               generator=generator)[:per_class]]
                     for c in range(10)])
    x, y = data.train_x[idx], data.train_y[idx]
    optimizer = torch.optim.Adam(proxy.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(300):
        loss = F.cross_entropy(proxy(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    save_cached(proxy.state_dict(), path, {"per_class": per_class,
                                              "heldout_accuracy": accuracy(proxy.eval(), data.test_x, data.test_y)})
    return proxy.eval()


def class_log_prob(classifier: nn.Module, digit: int) -> PixelReward:
    """Per-sample reward ``log p(digit | x)`` under ``classifier`` (differentiable in x), on x's device."""
    device = next(classifier.parameters()).device
    return lambda x: F.log_softmax(classifier(x.to(device)), dim=1)[:, digit].to(x.device)


def class_log_odds(classifier: nn.Module, digit: int) -> PixelReward:
    """Per-sample reward ``log p(digit | x) / (1 - p(digit | x))`` = the digit's logit minus the logsumexp of the
    other logits: unbounded, so its gradient does not vanish once the classifier is convinced."""
    device = next(classifier.parameters()).device

    def reward(x: torch.Tensor) -> torch.Tensor:
        logits = classifier(x.to(device))
        others = torch.cat([logits[:, :digit], logits[:, digit + 1:]], dim=1)
        return (logits[:, digit] - torch.logsumexp(others, dim=1)).to(x.device)
    return reward
