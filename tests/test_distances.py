"""FID and KID between feature sets: KID is unbiased at small n where FID is not (docs/metrics.md)."""

from __future__ import annotations

import pytest
import torch

from bilevel_diffusion.metrics.distances import feature_distances


def _gaussian(n: int, dim: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) + shift


def test_kid_is_unbiased_at_small_n_where_fid_is_not() -> None:
    # two sets of 64 draws from one 128-d Gaussian: the true distance is 0
    same = [feature_distances(_gaussian(64, 128, 2 * i), _gaussian(64, 128, 2 * i + 1)) for i in range(8)]
    fids = torch.tensor([d["fid"] for d in same])
    kids = torch.tensor([d["kid"] for d in same])
    assert fids.min() > 50  # rank-deficient covariances: FID far above 0 for identical distributions
    assert abs(kids.mean()) < 3 * kids.std() / 8 ** 0.5 + 1e-3  # KID's mean is 0 within its standard error
    assert all(d["n"] == 64 for d in same)
    # a real difference (mean shift 0.5 per coordinate: the exact squared MMD of the cubic kernel is > 0.2) shows
    shifted = feature_distances(_gaussian(64, 128, 100, shift=0.5), _gaussian(64, 128, 101))
    assert shifted["kid"] > 10 * kids.abs().max()


def test_unequal_sets_use_the_smaller_n_and_leave_the_random_state_alone() -> None:
    torch.manual_seed(5)
    before = torch.get_rng_state()
    first = feature_distances(_gaussian(30, 8, 0), _gaussian(200, 8, 1))
    assert torch.equal(torch.get_rng_state(), before)
    assert first == feature_distances(_gaussian(30, 8, 0), _gaussian(200, 8, 1))  # subsets drawn from a fixed seed
    assert first["n"] == 30
    with pytest.raises(ValueError, match="at least 2"):
        feature_distances(_gaussian(1, 8, 0), _gaussian(10, 8, 1))


def test_paired_kid_is_unbiased_for_pairs_that_share_their_noise() -> None:
    # a_i and b_i nearly equal (guided and pre-trained samples from one noise at a large lambda): the distributions
    # are almost the same, so the KID must be ~0; the two-sample form, which keeps k(a_i, b_i), is far below 0
    a = [_gaussian(64, 16, i) for i in range(8)]
    b = [x + 0.01 * _gaussian(64, 16, 100 + i) for i, x in enumerate(a)]
    paired = torch.tensor([feature_distances(x, y, paired=True)["kid"] for x, y in zip(a, b)])
    unpaired = torch.tensor([feature_distances(x, y)["kid"] for x, y in zip(a, b)])
    assert paired.abs().max() < 0.01 and unpaired.mean() < -0.2, (paired, unpaired)
    shifted = feature_distances(a[0] + 0.5, a[0], paired=True)
    assert shifted["kid"] > 0.2
    with pytest.raises(ValueError, match="same size"):
        feature_distances(a[0], a[1][:10], paired=True)
