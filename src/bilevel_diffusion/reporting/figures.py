"""Figures: schedules (alpha-bar_t and beta_t), schedule parameters over steps, FID over wall clock; `save_figure`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from bilevel_diffusion.schedules.family import NoiseSchedule  # noqa: E402


def plot_schedules(curves: Mapping[str, NoiseSchedule], path: Path, title: str = "") -> Path:
    """alpha-bar_t (left) and beta_t (right, log scale) of each labelled schedule."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, schedule in curves.items():
        with torch.no_grad():
            left.plot(schedule.alphas_cumprod().numpy(), label=label)
            right.plot(schedule.betas().clamp_min(1e-8).numpy(), label=label)
    left.set(xlabel="t", ylabel=r"$\bar\alpha_t$", title=r"$\bar\alpha_t$")
    right.set(xlabel="t", ylabel=r"$\beta_t$", yscale="log", title=r"$\beta_t$")
    left.legend(fontsize=8)
    if title:
        fig.suptitle(title)
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


def plot_fid_over_wall_clock(curves: Mapping[str, Sequence[tuple[float, float]]], path: Path,
                             ylabel: str = "reported FID (best so far)") -> Path:
    """Reported FID against wall-clock seconds, one step curve (or point) per method."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in curves.items():
        seconds, fids = zip(*points)
        ax.step(seconds, fids, where="post", marker="o", label=label)
    ax.set(xlabel="wall clock (s)", ylabel=ylabel)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def save_figure(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
