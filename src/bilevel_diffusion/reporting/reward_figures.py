"""Figures of one Scenario A run: lambda over the bilevel steps, mean rewards against lambda, and a scatter of
vector-valued samples (the Gaussian testbed) against the pre-trained ones."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from bilevel_diffusion.reporting.figures import save_figure  # noqa: E402


def plot_lambda_trace(lambdas: Sequence[float], path: Path, title: str) -> Path:
    """lambda (log scale) at every bilevel step."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(lambdas, marker=".")
    ax.set(xlabel="bilevel step", ylabel="lambda", yscale="log", title=f"{title}: lambda over steps")
    return save_figure(fig, path)


def plot_rewards_vs_lambda(lams: Sequence[float], r1: Sequence[float], r2: Sequence[float], chosen: float,
                           path: Path, title: str, how: str) -> Path:
    """Mean r1 (upper) and r2 (lower) against lambda, with the chosen lambda marked; ``how`` says where the means
    come from (search trials, an importance-weighted pool)."""
    order = sorted(range(len(lams)), key=lams.__getitem__)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([lams[i] for i in order], [r1[i] for i in order], marker=".", label="r1 (upper)")
    ax.plot([lams[i] for i in order], [r2[i] for i in order], marker=".", label="r2 (lower)")
    ax.axvline(chosen, color="k", ls="--", lw=1, label=f"chosen lambda = {chosen:.3g}")
    ax.set(xscale="log", xlabel="lambda", ylabel="mean reward", title=f"{title}: rewards vs lambda\n({how})")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_sample_scatter(shown: Sequence[torch.Tensor], reference: torch.Tensor, lam: float, path: Path) -> Path:
    """The first two coordinates of guided samples (one set per prompt) over the pre-trained samples."""
    fig, ax = plt.subplots(figsize=(4, 4))
    second = min(1, reference.shape[1] - 1)
    ax.scatter(reference[:, 0], reference[:, second], s=3, alpha=0.4, label="pre-trained")
    for points in shown:
        ax.scatter(points[:, 0], points[:, second], s=3, alpha=0.4, label=f"guided, lambda={lam:.3g}")
    ax.legend(fontsize=7, markerscale=3)
    return save_figure(fig, path)
