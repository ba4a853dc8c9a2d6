"""Distances between two sets of feature vectors: the Fréchet distance (the FID formula) and the kernel distance
(KID: unbiased squared MMD with the cubic polynomial kernel), both through torchmetrics.

FID is biased upwards when n is not large against the feature dimension (the fitted covariances are rank-deficient
below n = d); KID is unbiased at any n, so every distance this project reports comes with its KID and its n
(docs/metrics.md).
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance, poly_kernel

#: torchmetrics settings of every metric here: with ``hardware=ddp`` each rank already holds the gathered samples, so
#: the metric must not sum its states over the ranks again
LOCAL = {"sync_on_compute": False}

#: random subsets torchmetrics' KID averages over when the two sets differ in size (one subset when they do not)
KID_SUBSETS = 10


class _Identity(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def kid_compute(metric: KernelInceptionDistance, num_real: int, num_fake: int, seed: int = 0) -> float:
    """KID of an updated ``metric`` on subsets of min(n_real, n_fake): the whole smaller set, so nothing is thrown
    away; the subsets are drawn from ``seed`` without moving the caller's random state. The kernel is evaluated in
    float64: with features of norm ~10² the cubic kernel reaches ~10⁶, and float32 cancellation would swamp the
    difference of its means."""
    metric.real_features = [f.double() for f in metric.real_features]
    metric.fake_features = [f.double() for f in metric.fake_features]
    metric.subset_size = min(num_real, num_fake)
    metric.subsets = 1 if num_real == num_fake else KID_SUBSETS
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, _ = metric.compute()
    return float(mean)


def paired_kid(a: torch.Tensor, b: torch.Tensor) -> float:
    """KID of *paired* sets (``a[i]`` and ``b[i]`` from the same noise, e.g. guided and pre-trained samples): the
    U-statistic over pairs ``mean_{i != j} k(a_i, a_j) + k(b_i, b_j) - k(a_i, b_j) - k(b_i, a_j)``, unbiased for
    i.i.d. pairs whatever the dependence within a pair. (The two-sample form keeps the ``k(a_i, b_i)`` terms and is
    biased downwards when ``a_i`` and ``b_i`` are alike.)"""
    a, b = a.double(), b.double()
    h = poly_kernel(a, a) + poly_kernel(b, b) - poly_kernel(a, b) - poly_kernel(b, a)
    off_diagonal = ~torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
    return float(h[off_diagonal].mean())


def feature_distances(a: torch.Tensor, b: torch.Tensor, paired: bool = False) -> dict[str, float]:
    """``{"fid", "kid", "n"}`` between the feature sets ``a`` and ``b`` ([N, D] each); ``n`` = the smaller N.
    ``paired``: ``a[i]`` and ``b[i]`` share their noise (KID by :func:`paired_kid`; the sets must be equal in size)."""
    if min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"a distance needs at least 2 samples per set (got {a.shape[0]} and {b.shape[0]})")
    if paired and a.shape[0] != b.shape[0]:
        raise ValueError(f"paired sets must have the same size (got {a.shape[0]} and {b.shape[0]})")
    dim = a.shape[1]
    fid = FrechetInceptionDistance(feature=_Identity(dim), **LOCAL)
    fid.update(b.double(), real=True)
    fid.update(a.double(), real=False)
    if paired:
        kid = paired_kid(a, b)
    else:
        metric = KernelInceptionDistance(feature=_Identity(dim), subset_size=2, **LOCAL)
        metric.update(b.double(), real=True)
        metric.update(a.double(), real=False)
        kid = kid_compute(metric, b.shape[0], a.shape[0])
    return {"fid": float(fid.compute()), "kid": kid, "n": min(a.shape[0], b.shape[0])}

