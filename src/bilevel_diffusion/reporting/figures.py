"""Figures: schedules (alpha-bar_t and beta_t), schedule parameters over steps, anytime curves; `save_figure`."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bilevel_diffusion.schedules.family import NoiseSchedule  # noqa: E402


def plot_schedules(curves: Mapping[str, NoiseSchedule], path: Path, title: str = "") -> Path:
    """alpha-bar_t (left) and beta_t (right, log scale) of each labelled schedule; schedules that coincide share one
    line and one legend entry (their labels joined), and the legend sits beside the axes."""
    groups: list[tuple[list[str], torch.Tensor, torch.Tensor]] = []
    for label, schedule in curves.items():
        with torch.no_grad():
            abar, betas = schedule.alphas_cumprod(), schedule.betas()
        same = next((g for g in groups if g[1].shape == abar.shape and torch.allclose(g[1], abar, atol=1e-6)), None)
        if same is not None:
            same[0].append(label)
        else:
            groups.append(([label], abar, betas))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    styles = ["-", "--", "-.", ":"]
    for i, (labels, abar, betas) in enumerate(groups):
        style = {"ls": styles[i % len(styles)], "color": f"C{i}", "lw": 1.6}
        left.plot(abar.numpy(), label=", ".join(labels), **style)
        right.plot(betas.clamp_min(1e-8).numpy(), **style)
    left.set(xlabel="training timestep t", ylabel=r"$\bar\alpha_t$", title=r"$\bar\alpha_t$ (signal kept)")
    right.set(xlabel="training timestep t", ylabel=r"$\beta_t$", yscale="log", title=r"$\beta_t$ (log scale)")
    fig.legend(*left.get_legend_handles_labels(), fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_parameter_traces(traces: Mapping[str, Sequence[Mapping[str, float]]], names: Sequence[str],
                          path: Path) -> Path:
    """One panel per schedule parameter: its value over theta_y steps, one line per run (``traces[label]`` =
    ``metrics.jsonl`` rows holding ``step`` and ``schedule_<name>``)."""
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for label, rows in traces.items():
            points = [(r["step"], r[f"schedule_{name}"]) for r in rows if f"schedule_{name}" in r]
            if points:
                ax.plot(*zip(*points), label=label)
        ax.set(xlabel="theta_y step", title=name)
    axes[0][0].legend(fontsize=8)
    return save_figure(fig, path)


def _step_values(xs: Sequence[float], ys: Sequence[float], grid: np.ndarray) -> np.ndarray:
    """A step curve (value ``ys[k]`` from ``xs[k]`` on) read at ``grid``; NaN before its first point or where inf."""
    index = np.searchsorted(np.asarray(xs, dtype=float), grid, side="right") - 1
    values = np.where(index >= 0, np.asarray(ys, dtype=float)[np.clip(index, 0, None)], np.nan)
    return np.where(np.isfinite(values), values, np.nan)


def plot_anytime(curves: Mapping[str, Mapping[str, Sequence[tuple[Sequence[float], Sequence[float]]]]],
                 points: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]], xlabels: Mapping[str, str],
                 ylabel: str, path: Path, title: str = "") -> Path:
    """Anytime curves, one panel per compute axis (log x): per search, the mean over seeds of its answer's quality
    against cumulative compute (``curves[axis][method]`` = one ``(compute, quality)`` step curve per seed) with a
    band of one standard deviation; per method without trials, its seeds' mean as a point with error bars in both
    directions (``points[axis][method]`` = one ``(compute, quality)`` per seed). Legend beside the panels."""
    fig, panels = plt.subplots(1, len(xlabels), figsize=(5.2 * len(xlabels), 3.9), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, (axis, xlabel) in zip(panels[0], xlabels.items()):
        for i, (method, seeds) in enumerate(curves.get(axis, {}).items()):
            first = [xs[0] for xs, _ in seeds]
            # to just past the last trial, so that the final answer's level shows; the marker is the budget's end
            last = max(xs[-1] for xs, _ in seeds)
            grid = np.geomspace(max(min(first), 1e-9), last * 1.05, 300)
            values = np.stack([_step_values(xs, ys, grid) for xs, ys in seeds])
            with warnings.catch_warnings():  # columns where no (or one) seed has a value yet: NaN, not drawn
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0, ddof=1)
            color = f"C{i}"
            (line,) = ax.plot(grid, mean, color=color, lw=1.8, drawstyle="steps-post")
            ax.plot([last], [mean[np.searchsorted(grid, last, side="right") - 1]], "|", color=color, ms=12, mew=2)
            ax.fill_between(grid, mean - std, mean + std, color=color, alpha=0.2, step="post", lw=0)
            handles.setdefault(f"{method} (mean ± sd over {len(seeds)} seeds)", line)
        offset = len(curves.get(axis, {}))
        for j, (method, seeds) in enumerate(points.get(axis, {}).items()):
            xs, ys = np.asarray([x for x, _ in seeds], dtype=float), np.asarray([y for _, y in seeds], dtype=float)
            spread = (lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)
            if xs.mean() <= 0:  # spent none of this axis choosing (a fixed schedule): its quality as a level
                level = ax.axhline(float(ys.mean()), color=f"C{offset + j}", ls="--", lw=1.2)
                handles.setdefault(f"{method} (spends no {xlabel.split(' (')[0]}; mean of {len(seeds)} seeds)", level)
                continue
            bar = ax.errorbar(float(xs.mean()), float(ys.mean()), xerr=spread(xs), yerr=spread(ys),
                              fmt="o*sD^v"[j % 6], ms=8, color=f"C{offset + j}", capsize=3)
            handles.setdefault(f"{method} (final point, {len(seeds)} seeds)", bar)
        ax.set(xscale="log", xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3, which="both", lw=0.5)
    fig.legend(list(handles.values()), list(handles), fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def save_figure(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # legends placed beside the axes stay in the file
    plt.close(fig)
    return path


def plot_points(points: torch.Tensor, path: Path, title: str = "") -> Path:
    """A scatter plot of 2-D samples in [-1, 1]^2 (the testbed's sample "grid")."""
    fig, ax = plt.subplots(figsize=(4, 4))
    xy = points.detach().float().cpu().numpy()
    ax.scatter(xy[:, 0], xy[:, 1], s=2, alpha=0.5, color="C0", linewidths=0)
    ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), aspect="equal", xlabel="$x_1$", ylabel="$x_2$",
           title=title or f"{xy.shape[0]:,} samples")
    return save_figure(fig, path)
