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
