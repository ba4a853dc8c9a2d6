"""FID, KID and Inception Score through torchmetrics, with a pluggable feature network.

``metrics.fid.features=mnist_classifier`` (default): the project's MNIST CNN (penultimate layer for FID, logits
for IS). ``metrics.fid.features=inception``: torch-fidelity's FID Inception-v3 from a local weights file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.metrics.distances import (LOCAL, feature_distances, frechet_to_reference, kid_compute,
                                                 real_statistics)
from bilevel_diffusion.metrics.classifier import FEATURE_DIM, MNISTClassifier, load_or_train_classifier


class _ClassifierFeatures(nn.Module):
    num_features = FEATURE_DIM

    def __init__(self, classifier: MNISTClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x)


class _ClassifierLogits(_ClassifierFeatures):
    num_features = 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


class ImageQuality:
    """FID and KID of generated images against a fixed real set, and IS; real features are computed once.

    :meth:`differentiable_fid` is the same FID as a torch function of the samples (for first-order gradients of the
    upper objective, ``docs/method.md``); it needs a feature network held here (not ``features=inception``)."""

    def __init__(self, real: torch.Tensor, features: str = "mnist_classifier", cache_dir: str | Path = "outputs/cache",
                 inception_path: str | None = None, device: torch.device | str = "cpu", batch_size: int = 500) -> None:
        self.features, self.device, self.batch_size = features, torch.device(device), batch_size
        self.feature_net: nn.Module | None = None
        if features == "mnist_classifier":
            classifier = load_or_train_classifier(cache_dir)
            self._use_networks(_ClassifierFeatures(classifier), _ClassifierLogits(classifier),
                               "mnist_classifier (project CNN, 128-d penultimate layer)")
        elif features == "inception":
            if not inception_path or not Path(inception_path).is_file():
                raise ConfigError(f"metrics.fid.features=inception needs torch-fidelity's Inception weights "
                                  f"(weights-inception-2015-12-05-6726825d.pth) at metrics.fid.inception_path "
                                  f"(got {inception_path!r})")
            self.fid = FrechetInceptionDistance(feature=2048, normalize=True, reset_real_features=False,
                                                feature_extractor_weights_path=str(inception_path), **LOCAL)
            self.kid = KernelInceptionDistance(feature=2048, normalize=True, subset_size=2, reset_real_features=False,
                                               feature_extractor_weights_path=str(inception_path), **LOCAL)
            self.inception = InceptionScore(normalize=True, feature_extractor_weights_path=str(inception_path),
                                            **LOCAL)
            self.label = "inception-v3 (torch-fidelity FID weights, pool3 2048-d)"
        else:
            raise ConfigError(f"metrics.fid.features must be mnist_classifier or inception (got {features!r})")
        self._set_real(real)

    def _use_networks(self, features: nn.Module, logits: nn.Module, label: str) -> None:
        """FID and KID on ``features`` (a module with ``num_features``), IS on the softmax of ``logits``."""
        self.feature_net, self.label = features, label
        self.fid = FrechetInceptionDistance(feature=features, reset_real_features=False, **LOCAL)
        self.kid = KernelInceptionDistance(feature=features, subset_size=2, reset_real_features=False, **LOCAL)
        self.inception = InceptionScore(feature=logits, **LOCAL)

    def _set_real(self, real: torch.Tensor) -> None:
        for metric in (self.fid, self.kid, self.inception):
            metric.to(self.device)
        self.num_real = real.shape[0]
        self._real_statistics: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._update(self.fid, real, real=True)
        self._update(self.kid, real, real=True)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if self.features == "inception":  # 3-channel [0, 1]
            return ((images.clamp(-1, 1) + 1) / 2).repeat(1, 3, 1, 1)
        return images.clamp(-1, 1)

    def _update(self, metric, images: torch.Tensor, **kwargs) -> None:
        for i in range(0, images.shape[0], self.batch_size):
            metric.update(self._prepare(images[i:i + self.batch_size]).to(self.device), **kwargs)

    @torch.no_grad()
    def fid_score(self, fake: torch.Tensor) -> float:
        """FID of ``fake`` against the real set given at construction."""
        if fake.shape[0] < 2:
            raise ConfigError(f"FID needs at least 2 generated images (got {fake.shape[0]})")
        self.fid.reset()  # keeps the real statistics (reset_real_features=False)
        self._update(self.fid, fake, real=False)
        return float(self.fid.compute())

    @torch.no_grad()
    def kid_score(self, fake: torch.Tensor) -> float:
        """KID (unbiased) of ``fake`` against the real set, on subsets of min(n_fake, n_real) samples."""
        if fake.shape[0] < 2:
            raise ConfigError(f"KID needs at least 2 generated images (got {fake.shape[0]})")
        self.kid.reset()
        self._update(self.kid, fake, real=False)
        return kid_compute(self.kid, self.num_real, fake.shape[0])

    @torch.no_grad()
    def inception_score(self, fake: torch.Tensor) -> tuple[float, float]:
        """(mean, std) of the Inception Score over torchmetrics' 10 splits."""
        self.inception.reset()
        self._update(self.inception, fake)
        mean, std = self.inception.compute()
        return float(mean), float(std)

    def differentiable_fid(self, fake: torch.Tensor) -> torch.Tensor:
        """FID of ``fake`` against the real set as a float64 torch scalar with a graph to ``fake`` (the value agrees
        with :meth:`fid_score`; :func:`~bilevel_diffusion.metrics.distances.frechet_to_reference`)."""
        if self.feature_net is None:
            raise ConfigError(f"a differentiable FID needs a feature network held by the project "
                              f"(features={self.features!r} has none)")
        if fake.shape[0] < 2:
            raise ConfigError(f"FID needs at least 2 generated samples (got {fake.shape[0]})")
        if self._real_statistics is None:
            self._real_statistics = real_statistics(self.fid)
        features = self.feature_net(self._prepare(fake).to(self.device)).double()
        return frechet_to_reference(features, *self._real_statistics)


class FeatureDrift:
    """FID and KID between guided samples and the pre-trained samples on the same noise (``fid_vs_pretrained`` /
    ``kid_vs_pretrained`` of the MNIST tasks), on the project CNN's features; KID in its paired form
    (:func:`~bilevel_diffusion.metrics.distances.paired_kid`)."""

    def __init__(self, cache_dir: str | Path, device: torch.device | str = "cpu") -> None:
        self.features = _ClassifierFeatures(load_or_train_classifier(cache_dir)).to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, samples: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        def embed(images: torch.Tensor) -> torch.Tensor:
            return self.features(images.clamp(-1, 1).to(self.device)).double().cpu()

        return feature_distances(embed(samples), embed(reference), paired=True)
