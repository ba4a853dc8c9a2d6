"""Scenario B, one seed: a table and two figures from the methods' run directories.

Reads only ``config.yaml``, ``summary.json`` and ``metrics.jsonl`` (the run contract, docs/usage.md), so it can be re-run
on finished runs. Every FID here is the *reported* one (``eval.num_samples`` samples), never the in-loop objective.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

from bilevel_diffusion.reporting.figures import plot_parameter_traces, plot_schedules
from bilevel_diffusion.reporting.run_files import read_metrics, read_summary
from bilevel_diffusion.schedules.family import CosineSchedule, NoiseSchedule

COLUMNS = [("reported FID", "fid"), ("IS", "is"), ("wall clock (s)", "wall_clock_s"),
           ("trainings used", "trainings_used"), ("sampler NFEs", "sampler_nfe")]


def final_schedule(run_dir: Path) -> NoiseSchedule:
    """The schedule a run ended with, as a fixed schedule of the run's family."""
    params = {k: v for k, v in read_summary(run_dir)["schedule"].items() if k != "name"}
    return instantiate(OmegaConf.load(run_dir / "config.yaml").schedule, learnable=False, **params)


def _number(value: Any) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{value:,.0f}" if abs(value) >= 1000 or isinstance(value, int) else f"{value:.2f}"


def comparison_markdown(runs: Mapping[str, Path]) -> str:
    """One row per method: reported FID, IS, wall clock, trainings, sampler NFEs and the final schedule."""
    summaries = {label: read_summary(run_dir) for label, run_dir in runs.items()}
    header = ["method", *[title for title, _ in COLUMNS], "final schedule (start, end, tau, eps)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, summary in summaries.items():
        schedule = summary["schedule"]
        params = ", ".join(f"{schedule[k]:.3f}" for k in ("start", "end", "tau", "eps") if k in schedule)
        lines.append("| " + " | ".join([label, *[_number(summary.get(key)) for _, key in COLUMNS],
                                        f"{schedule['name']} ({params})"]) + " |")
    any_summary = next(iter(summaries.values()))
    lines.append("")
    lines.append(f"Reported FID/IS: {any_summary.get('eval_num_samples')} DDIM samples from fixed noise, features: "
                 f"{any_summary.get('fid_features')}. Wall clock and NFEs include every training and sampler call.")
    return "\n".join(lines) + "\n"


def write_comparison(runs: Mapping[str, Path], out_dir: Path) -> dict[str, Path]:
    """``comparison.md``, ``schedules.png`` and ``schedule_params.png`` in ``out_dir`` (the anytime curves over all
    seeds: :mod:`~bilevel_diffusion.reporting.views`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "comparison.md"
    table.write_text(comparison_markdown(runs))
    first = next(iter(runs.values()))
    initial = read_summary(first)["initial_schedule"]
    curves: dict[str, NoiseSchedule] = {label: final_schedule(run_dir) for label, run_dir in runs.items()}
    curves["initial q"] = instantiate(OmegaConf.load(first / "config.yaml").schedule, learnable=False, **initial)
    curves["standard cosine"] = CosineSchedule(start=0.0, end=1.0, tau=1.0, eps=0.008)
    rows = {label: read_metrics(run_dir) for label, run_dir in runs.items()}
    traces = {label: metrics for label, metrics in rows.items() if any("objective_fid" in row for row in metrics)}
    return {"table": table,
            "schedules": plot_schedules(curves, out_dir / "schedules.png",
                                        title=f"final schedules q of each method (seed {read_summary(first)['seed']})"),
            "schedule_params": plot_parameter_traces(traces, ("start", "end", "tau", "eps"),
                                                     out_dir / "schedule_params.png")}
