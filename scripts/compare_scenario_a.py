"""Scenario A comparison: ``python scripts/compare_scenario_a.py [--out DIR] [--report-only] [key=value ...]``.

Runs ``task=finetune_mnist experiment=scenario_a_quick`` once per method (bilevel ``closed_form`` and the ``grid``,
``random``, ``bayesian`` and ``weighted_sum`` baselines) as one Hydra sweep into ``--out`` (default
``outputs/scenario_a_comparison``), then writes there ``comparison.md`` (r1, r2, fid_vs_pretrained, wall clock and
sampler NFEs per method; paper Table 1), ``rewards_vs_lambda.png`` (the over-optimisation curve from the grid's
trials, each method's lambda marked) and ``samples_small_chosen_large.png``. Extra ``key=value`` arguments go to
every run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("closed_form", "grid", "random", "bayesian", "weighted_sum")
COLUMNS = ("lambda", "r1", "r2", "fid_vs_pretrained", "objective", "wall_clock_s", "sampler_nfe", "method_nfe")


def read_runs(out: Path) -> dict[str, Path]:
    """method name -> run directory, for every finished run of the sweep."""
    runs = {}
    for summary in sorted(out.glob("*/summary.json")):
        runs[json.loads(summary.read_text())["method"]] = summary.parent
    return runs


def table(runs: dict[str, Path]) -> str:
    rows = ["| method | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for method in METHODS:
        if method in runs:
            s = json.loads((runs[method] / "summary.json").read_text())
            cells = [f"{s[c]:.4g}" if isinstance(s[c], float) else str(s[c]) for c in COLUMNS]
            rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_curve(runs: dict[str, Path], path: Path) -> None:
    """r1 and r2 of the grid's trials against lambda, with every method's chosen lambda marked."""
    trials = [json.loads(line) for line in (runs["grid"] / "metrics.jsonl").read_text().splitlines()
              if line and "trial" in json.loads(line)]
    trials.sort(key=lambda row: row["lambda"])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([t["lambda"] for t in trials], [t["r1"] for t in trials], marker="o", label="r1 (strong CNN)")
    ax.plot([t["lambda"] for t in trials], [t["r2"] for t in trials], marker="s", label="r2 (proxy log-odds)")
    for i, (method, run_dir) in enumerate(runs.items()):
        lam = json.loads((run_dir / "summary.json").read_text())["lambda"]
        ax.axvline(lam, color=f"C{i + 2}", ls="--", lw=1, label=f"{method}: {lam:.3g}")
    ax.set(xscale="log", xlabel="lambda", ylabel="mean reward of the target digit",
           title="finetune_mnist: over-optimisation of the proxy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_samples(runs: dict[str, Path], path: Path) -> None:
    """Guided samples at the smallest grid lambda, at the bilevel method's lambda and at the largest grid lambda."""
    grids = sorted(runs["grid"].glob("trial_lambda_*.png"), key=lambda p: float(p.stem.split("_")[-1]))
    panels = [(f"lambda = {grids[0].stem.split('_')[-1]}", grids[0]),
              (f"bilevel lambda = {json.loads((runs['closed_form'] / 'summary.json').read_text())['lambda']:.3g}",
               runs["closed_form"] / "samples.png"),
              (f"lambda = {grids[-1].stem.split('_')[-1]}", grids[-1])]
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    for ax, (title, image) in zip(axes, panels):
        ax.imshow(mpimg.imread(str(image)), cmap="gray")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "scenario_a_comparison")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the table and figures")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args()
    out = args.out.resolve()
    if not args.report_only:
        subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", "task=finetune_mnist",
                        "experiment=scenario_a_quick", f"upper_estimator={','.join(METHODS)}", *args.overrides,
                        f"hydra.sweep.dir={out}"], cwd=ROOT, check=True)
    runs = read_runs(out)
    if not {"grid", "closed_form"} <= set(runs):
        sys.exit(f"error: the grid and closed_form runs are needed under {out}")
    (out / "comparison.md").write_text("# finetune_mnist: bilevel vs search baselines\n\n" + table(runs) + "\n")
    plot_curve(runs, out / "rewards_vs_lambda.png")
    plot_samples(runs, out / "samples_small_chosen_large.png")
    print((out / "comparison.md").read_text())


if __name__ == "__main__":
    main()
