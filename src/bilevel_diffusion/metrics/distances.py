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



def _symmetric_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def real_statistics(fid: FrechetInceptionDistance) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, symmetric square root of the covariance, trace of the covariance) of the real features that an
    updated torchmetrics FID holds, in float64."""
    n = fid.real_features_num_samples.double()
    mean = fid.real_features_sum.double() / n
    cov = (fid.real_features_cov_sum.double() - n * torch.outer(mean, mean)) / (n - 1)
    return mean, _symmetric_sqrt(cov), torch.trace(cov)


def frechet_to_reference(features: torch.Tensor, mean_ref: torch.Tensor, cov_ref_sqrt: torch.Tensor,
                         cov_ref_trace: torch.Tensor) -> torch.Tensor:
    """The Fréchet distance between ``features`` [N, D] and a reference Gaussian, differentiable in ``features``::

        |mu - mu_r|^2 + tr S + tr S_r - 2 tr (S_r^1/2 S S_r^1/2)^1/2

    The last trace is the sum of the square roots of the eigenvalues of ``M M^T / (N - 1)`` with
    ``M = (features - mu) S_r^1/2`` (the smaller of ``M M^T`` and ``M^T M``, which share their nonzero eigenvalues),
    so no square root of a rank-deficient matrix is differentiated; eigenvalues below 1e-10 of the largest count as
    zero and pass no gradient. The value equals torchmetrics' FID of the same features."""
    n = features.shape[0]
    features = features.double()
    mean = features.mean(0)
    centred = features - mean
    m = centred @ cov_ref_sqrt
    gram = (m @ m.T if n <= m.shape[1] else m.T @ m) / (n - 1)
    eigenvalues = torch.linalg.eigvalsh(gram)
    floor = 1e-10 * eigenvalues.max().detach().clamp_min(1e-300)
    trace_sqrt = torch.where(eigenvalues > floor, eigenvalues.clamp_min(floor).sqrt(), 0.0).sum()
    return (mean - mean_ref).pow(2).sum() + centred.pow(2).sum() / (n - 1) + cov_ref_trace - 2 * trace_sqrt
