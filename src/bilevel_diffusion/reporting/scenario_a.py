"""Figures of Scenario A (paper Sec. 3.1, Fig. 1) from run directories of one seed, one per method.

Reads only the run contract (docs/usage.md): ``summary.json``, ``metrics.jsonl`` and the PNGs a run writes, so it can be
re-run on finished runs.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from bilevel_diffusion.reporting.figures import save_figure  # noqa: E402
from bilevel_diffusion.reporting.run_files import read_metrics, read_summary  # noqa: E402


def search_trials(run_dir: Path) -> list[dict]:
    """The evaluated trials of a search run (rows of ``metrics.jsonl`` holding ``trial``), by lambda."""
    return sorted((row for row in read_metrics(run_dir) if "trial" in row), key=lambda row: row["lambda"])


def plot_rewards_vs_lambda(runs: Mapping[str, Path], path: Path, curve_from: str = "grid") -> Path:
    """r1 and r2 of the ``curve_from`` search's trials against lambda (the over-optimisation curve), with every
    method's chosen lambda marked (and lambda* where the task knows it); the legend sits beside the axes."""
    trials = search_trials(runs[curve_from])
    summary = read_summary(runs[curve_from])
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    ax.plot([t["lambda"] for t in trials], [t["r1"] for t in trials], marker="o", label=r"$r_1$ (upper objective)")
    ax.plot([t["lambda"] for t in trials], [t["r2"] for t in trials], marker="s", label=r"$r_2$ (fine-tuned reward)")
    styles = ["--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1))]
    for i, (method, run_dir) in enumerate(runs.items()):
        lam = read_summary(run_dir)["lambda"]
        ax.axvline(lam, color=f"C{i + 2}", ls=styles[i % len(styles)], lw=1.2,
                   label=rf"{method}: $\lambda$ = {lam:.3g}")
    star = next((read_summary(d).get("lambda_star") for d in runs.values() if "lambda_star" in read_summary(d)), None)
    if star is not None:
        ax.axvline(star, color="k", lw=2, alpha=0.35, label=rf"$\lambda^*$ = {star:.3g} (exact)")
    values = [t[k] for t in trials for k in ("r1", "r2")]
    if values and max(values) - min(values) > 200:  # a far-off grid point would flatten the rest
        ax.set_yscale("symlog", linthresh=1.0)
    ax.set(xscale="log", xlabel=r"KL strength $\lambda$ (log scale)", ylabel="mean reward of the guided samples",
           title=f"{summary['task']}, seed {summary['seed']}: rewards of the {curve_from} trials")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, path)


def plot_samples_small_chosen_large(runs: Mapping[str, Path], path: Path, chosen: Sequence[str] = ("closed_form",),
                                    grid: str = "grid") -> Path:
    """Guided samples at the grid's smallest lambda, at the lambda each method in ``chosen`` ended at (its final
    evaluation samples) and at the grid's largest."""
    images = sorted(runs[grid].glob("trial_lambda_*.png"), key=lambda p: float(p.stem.split("_")[-1]))
    panels = [(rf"$\lambda$ = {images[0].stem.split('_')[-1]} (grid)", images[0]),
              *((rf"$\lambda$ = {read_summary(runs[method])['lambda']:.3g} ({method})", runs[method] / "samples.png")
                for method in chosen),
              (rf"$\lambda$ = {images[-1].stem.split('_')[-1]} (grid)", images[-1])]
    pictures = [mpimg.imread(str(image)) for _, image in panels]
    height, width = pictures[0].shape[:2]
    panel_width = 10 / 3
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_width * len(panels), panel_width * height / width + 0.9))
    for ax, (title, _), picture in zip(axes, panels, pictures):
        ax.imshow(picture, cmap="gray")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    summary = read_summary(runs[chosen[0]])
    prompts = summary.get("prompts", [])
    if len(prompts) > 1:  # image grids hold one row per prompt
        axes[0].set_ylabel("rows: " + ", ".join(str(p) for p in prompts), fontsize=8)
    fig.suptitle(f"{summary['task']}, seed {summary['seed']}: guided samples at small, chosen and large lambda",
                 fontsize=10)
    return save_figure(fig, path)


def write_figures(runs: Mapping[str, Path], out_dir: Path, bilevel: str = "closed_form",
                  other_loops: Sequence[str] = ()) -> dict[str, Path]:
    """``rewards_vs_lambda.png``, ``samples_small_chosen_large.png`` (need a ``grid`` run; a panel for the bilevel
    method and for each of ``other_loops`` that ran) and the bilevel run's ``lambda_trace.png`` (lambda over bilevel
    steps) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    if "grid" in runs and any(runs["grid"].glob("trial_lambda_*.png")):
        written["rewards_vs_lambda"] = plot_rewards_vs_lambda(runs, out_dir / "rewards_vs_lambda.png")
        if bilevel in runs:
            chosen = [bilevel, *(method for method in other_loops if method in runs and method != bilevel)]
            written["samples"] = plot_samples_small_chosen_large(runs, out_dir / "samples_small_chosen_large.png",
                                                                 chosen)
    if bilevel in runs and (runs[bilevel] / "lambda_trace.png").exists():
        written["lambda_trace"] = Path(shutil.copyfile(runs[bilevel] / "lambda_trace.png",
                                                       out_dir / "lambda_trace.png"))
    return written


def plot_demo(bilevel: Path, grid: Path, path: Path) -> Path:
    """``make demo``'s figure: r1 and r2 of the grid's guided samples against lambda with the bilevel run's chosen
    lambda and rewards, beside samples at the grid's smallest lambda, at the chosen one and at the grid's largest."""
    trials, chosen = search_trials(grid), read_summary(bilevel)
    images = sorted(grid.glob("trial_lambda_*.png"), key=lambda p: float(p.stem.split("_")[-1]))
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6), gridspec_kw={"width_ratios": [1.4, 1, 1, 1]})
    curve = axes[0]
    lams = [t["lambda"] for t in trials]
    curve.plot(lams, [t["r1"] for t in trials], "o-", color="C0", label=r"$r_1$ (strong CNN), grid")
    curve.plot(lams, [t["r2"] for t in trials], "s-", color="C1", label=r"$r_2$ (weak proxy), grid")
    curve.plot([chosen["lambda"]], [chosen["r1"]], "*", ms=14, color="C0", label=r"$r_1$ at the bilevel $\lambda$")
    curve.plot([chosen["lambda"]], [chosen["r2"]], "*", ms=14, color="C1", label=r"$r_2$ at the bilevel $\lambda$")
    curve.axvline(chosen["lambda"], color="k", ls="--", lw=1)
    curve.set(xscale="log", xlabel=r"KL strength $\lambda$ (log scale)", ylabel="mean reward of guided samples")
    curve.legend(fontsize=7)
    panels = [(rf"$\lambda$ = {float(images[0].stem.split('_')[-1]):.3g} (grid: over-optimised)", images[0]),
              (rf"$\lambda$ = {chosen['lambda']:.3g} (bilevel, chosen)", bilevel / "samples.png"),
              (rf"$\lambda$ = {float(images[-1].stem.split('_')[-1]):.3g} (grid: about pre-trained)", images[-1])]
    for ax, (title, image) in zip(axes[1:], panels):
        ax.imshow(mpimg.imread(str(image)), cmap="gray")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1].set_ylabel("rows: digits " + ", ".join(str(p) for p in chosen.get("prompts", [])), fontsize=8)
    fig.suptitle(f"finetune_mnist, seed {chosen['seed']}: guidance by a weak proxy, lambda learned for a strong CNN",
                 fontsize=10)
    return save_figure(fig, path)
