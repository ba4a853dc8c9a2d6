"""Figures of one Scenario A run: lambda over the bilevel steps, mean rewards against lambda, and a scatter of
vector-valued samples (the Gaussian testbed) against the pre-trained ones."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import torch  # noqa: E402

from bilevel_diffusion.reporting.figures import save_figure  # noqa: E402


def _plain_log_ticks(axis) -> None:
    """Log-axis tick labels as plain numbers (0.03, 0.1, 2) instead of 3×10^-2 / 4×10^0."""
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def plot_lambda_trace(lambdas: Sequence[float], path: Path, title: str) -> Path:
    """lambda (log scale) at every bilevel step."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(lambdas, marker=".")
    ax.set(xlabel="bilevel step", ylabel=r"KL strength $\lambda$ (log scale)", yscale="log",
           title=rf"{title}: $\lambda$ over the bilevel steps")
    _plain_log_ticks(ax.yaxis)
    return save_figure(fig, path)


def plot_rewards_vs_lambda(lams: Sequence[float], r1: Sequence[float], r2: Sequence[float], chosen: float,
                           path: Path, title: str, how: str) -> Path:
    """Mean r1 (upper) and r2 (lower) against lambda, with the chosen lambda marked; ``how`` says where the means
    come from (search trials, an importance-weighted pool)."""
    order = sorted(range(len(lams)), key=lams.__getitem__)
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.plot([lams[i] for i in order], [r1[i] for i in order], marker=".", label=r"$r_1$ (upper objective)")
    ax.plot([lams[i] for i in order], [r2[i] for i in order], marker=".", label=r"$r_2$ (fine-tuned reward)")
    ax.axvline(chosen, color="k", ls="--", lw=1, label=rf"chosen $\lambda$ = {chosen:.3g}")
    ax.set(xscale="log", xlabel=r"KL strength $\lambda$ (log scale)", ylabel="mean reward",
           title=f"{title}: rewards against " + r"$\lambda$" + f"\n({how})")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, path)


def plot_sample_scatter(shown: Sequence[torch.Tensor], reference: torch.Tensor, lam: float, path: Path) -> Path:
    """The first two coordinates of guided samples (one set per prompt) over the pre-trained samples."""
    fig, ax = plt.subplots(figsize=(4, 4))
    second = min(1, reference.shape[1] - 1)
    ax.scatter(reference[:, 0], reference[:, second], s=3, alpha=0.4, label="pre-trained")
    for points in shown:
        ax.scatter(points[:, 0], points[:, second], s=3, alpha=0.4, label=rf"guided, $\lambda$ = {lam:.3g}")
    ax.set(xlabel=r"$x_1$", ylabel=r"$x_2$" if second else r"$x_1$")
    ax.legend(fontsize=7, markerscale=3)
    return save_figure(fig, path)
