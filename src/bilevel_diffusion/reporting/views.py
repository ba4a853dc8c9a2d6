"""Derived views of one comparison, computed from the stored trials of finished runs (never re-run; docs/results.md).

Every method runs at its own budget. A search's trial ``k`` is one line of its ``metrics.jsonl`` with

- ``objective``: the trial's *selection* value (trial noise; what the search ranks on), lower is better;
- ``report_objective``: the same point on the *evaluation* noise (``report_trials``; never used to select), on
  the trials that became the search's answer so far (the answer after any other trial is an earlier one);
- ``search_s`` / ``search_cost``: the search's cumulative wall clock (without those measurements) and sampler cost.

After trial ``k`` the search's answer is the trial with the lowest selection value so far, and its quality is that
trial's *reported* value: the anytime curve. A method without trials (the bilevel method, a fixed schedule) is one
point: its reported objective at its own compute (``wall_clock_s``; ``method_cost``, else ``sampler_cost`` less the
reported evaluation's ``report_nfe``).

Views: (a) the paper's table (final quality, time, cost per method), (b) each search's quality at the bilevel run's
compute (equal compute), (c) compute-to-match: the compute a search needed to first reach the bilevel run's quality,
the bilevel run's compute where it reached the search's final quality, and their ratio, per seed, with a bootstrap
interval over seeds (a seed where it was not reached counts as not reached, never dropped).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bilevel_diffusion.reporting.figures import plot_anytime
from bilevel_diffusion.reporting.run_files import read_metrics, read_summary

#: the compute axes: summary/trial key, axis label
AXES = {"wall_clock_s": "wall clock (s)", "sampler_cost": "sampler cost (forward-pass equivalents)"}


@dataclass(frozen=True)
class Quality:
    """How a task's objective is shown: ``sign * objective`` is the quality in the paper's units."""

    name: str  # e.g. "FID", "$r_1$"
    sign: float  # -1: the objective is minus the quality (rewards), +1: the objective is the quality (FID)

    @property
    def higher_is_better(self) -> bool:
        return self.sign < 0

    def shown(self, objective: float) -> float:
        return self.sign * objective


@dataclass
class Trace:
    """One run: its compute after each trial (one point for a method without trials) and the reported objective of
    its answer at that point (lower is better)."""

    method: str
    seed: int
    compute: dict[str, list[float]]  # axis -> cumulative compute after each point
    objective: list[float]  # reported objective of the answer so far (inf before the first finite trial)
    final: float  # the run's reported objective (summary.json)
    searched: bool

    def at(self, axis: str, budget: float) -> float:
        """The reported objective of the answer within ``budget`` of ``axis`` (inf if no point fits)."""
        fitting = [obj for c, obj in zip(self.compute[axis], self.objective) if c <= budget]
        return fitting[-1] if fitting else math.inf

    def first_reaching(self, axis: str, target: float) -> float | None:
        """The compute at which the answer's reported objective first reached ``target`` (None: never)."""
        return next((c for c, obj in zip(self.compute[axis], self.objective) if obj <= target), None)


def _method_cost(summary: Mapping[str, Any]) -> float:
    if "method_cost" in summary:
        return float(summary["method_cost"])
    return float(summary.get("sampler_cost", 0)) - float(summary.get("report_nfe", 0))


def run_trace(run_dir: Path) -> Trace:
    """The anytime trace of a finished run from its ``summary.json`` and ``metrics.jsonl``."""
    summary = read_summary(run_dir)
    trials = [row for row in read_metrics(run_dir) if "trial" in row]
    method, seed, final = summary["method"], int(summary["seed"]), float(summary["objective"])
    if not trials:
        return Trace(method, seed, {"wall_clock_s": [float(summary["wall_clock_s"])],
                                    "sampler_cost": [_method_cost(summary)]}, [final], final, False)
    chosen: Mapping[str, Any] | None = None
    objective = []
    for row in trials:
        if math.isfinite(row["objective"]) and (chosen is None or row["objective"] < chosen["objective"]):
            chosen = row
            if "report_objective" not in row:
                raise ValueError(f"{run_dir}: trial {row['trial']} became the search's answer but carries no "
                                 f"report_objective (run with upper_estimator.report_trials=true for anytime curves)")
        objective.append(float(chosen["report_objective"]) if chosen is not None else math.inf)
    compute = {"wall_clock_s": [float(row["search_s"]) for row in trials],
               "sampler_cost": [float(row["search_cost"]) for row in trials]}
    return Trace(method, seed, compute, objective, final, True)


def comparison_traces(comparison_dir: Path) -> dict[str, dict[int, Trace]]:
    """method -> seed -> trace of every finished run in ``comparison_dir/<method>/seed_<seed>``."""
    traces: dict[str, dict[int, Trace]] = {}
    for path in sorted(comparison_dir.glob("*/seed_*/summary.json")):
        trace = run_trace(path.parent)
        traces.setdefault(trace.method, {})[trace.seed] = trace
    return traces


def _mean_std(values: Sequence[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "–"
    text = _fmt(statistics.fmean(finite))
    if len(finite) > 1:
        text += f" ± {_fmt(statistics.stdev(finite))}"
    return text + (f" ({len(values) - len(finite)} of {len(values)} seeds: none)" if len(finite) < len(values) else "")


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "not reached"
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-2):
        return f"{value:.3g}"
    return f"{value:.4g}" if abs(value) < 100 else f"{value:,.0f}"


def paper_table(traces: Mapping[str, Mapping[int, Trace]], quality: Quality) -> list[dict[str, Any]]:
    """(a) Per method: final reported quality, its own wall clock and sampler cost, mean ± std over seeds."""
    rows = []
    for method, by_seed in traces.items():
        runs = list(by_seed.values())
        rows.append({"method": method, "seeds": len(runs),
                     "quality": _mean_std([quality.shown(t.final) for t in runs]),
                     **{axis: _mean_std([t.compute[axis][-1] for t in runs]) for axis in AXES}})
    return rows


def equal_compute(traces: Mapping[str, Mapping[int, Trace]], bilevel: str,
                  quality: Quality) -> list[dict[str, Any]]:
    """(b) Per search and axis: its answer's reported quality within the bilevel run's compute of the same seed."""
    rows = []
    for method, by_seed in traces.items():
        if method == bilevel or not any(t.searched for t in by_seed.values()):
            continue
        row: dict[str, Any] = {"method": method}
        for axis in AXES:
            values = [quality.shown(trace.at(axis, traces[bilevel][seed].compute[axis][-1]))
                      for seed, trace in sorted(by_seed.items()) if seed in traces[bilevel]]
            row[axis] = _mean_std(values)
        rows.append(row)
    return rows


@dataclass
class Match:
    """Compute-to-match of the bilevel method against one search on one axis, per seed."""

    search: str
    axis: str
    search_to_bilevel: dict[int, float | None]  # compute the search needed to reach the bilevel quality
    bilevel_to_search: dict[int, float | None]  # bilevel compute where it reached the search's final quality
    search_to_own_best: dict[int, float]  # compute at which the search first reached its own final answer

    @property
    def ratios(self) -> dict[int, float]:
        """Per seed: bilevel compute to the search's final quality / the search's compute to it (inf: not
        reached)."""
        return {seed: (self.bilevel_to_search[seed] / own if self.bilevel_to_search[seed] is not None else math.inf)
                for seed, own in self.search_to_own_best.items()}


def compute_to_match(traces: Mapping[str, Mapping[int, Trace]], bilevel: str, search: str, axis: str,
                     tolerance: float = 0.0) -> Match:
    """(c) Matching means a reported objective within ``tolerance`` of the target (objective units)."""
    match = Match(search, axis, {}, {}, {})
    for seed, trace in sorted(traces[search].items()):
        if seed not in traces[bilevel]:
            continue
        ours = traces[bilevel][seed]
        best = trace.objective[-1]
        match.search_to_bilevel[seed] = trace.first_reaching(axis, ours.final + tolerance)
        match.bilevel_to_search[seed] = ours.compute[axis][-1] if ours.final <= best + tolerance else None
        match.search_to_own_best[seed] = trace.first_reaching(axis, best)
    return match


def bootstrap_median(values: Sequence[float], resamples: int = 10_000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """Median of ``values`` (inf allowed: not reached) and its percentile bootstrap interval over them."""
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    medians = np.median(data[rng.integers(0, len(data), size=(resamples, len(data)))], axis=1)
    low, high = np.quantile(medians, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return float(np.median(data)), float(low), float(high)


def best_search(traces: Mapping[str, Mapping[int, Trace]], bilevel: str) -> str:
    """The search whose mean final reported objective is the lowest."""
    searches = [m for m, runs in traces.items() if m != bilevel and any(t.searched for t in runs.values())]
    if not searches:
        raise ValueError("no search among the runs")
    return min(searches, key=lambda m: statistics.fmean(t.final for t in traces[m].values()))


def markdown(title: str, rows: Sequence[Mapping[str, Any]], columns: Mapping[str, str]) -> str:
    """A markdown table of ``rows`` with ``columns`` (key -> header)."""
    lines = [f"**{title}**", "", "| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(key, "")) for key in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def match_rows(match: Match, quality: Quality) -> list[dict[str, Any]]:
    """One row per seed of a :class:`Match` (compute in the axis' units)."""
    def text(value: float | None) -> str:
        return "not reached within budget" if value is None else _fmt(value)
    return [{"seed": seed, "search_to_bilevel": text(match.search_to_bilevel[seed]),
             "bilevel_to_search": text(match.bilevel_to_search[seed]),
             "search_to_own_best": _fmt(match.search_to_own_best[seed]),
             "ratio": _fmt(match.ratios[seed])} for seed in sorted(match.search_to_own_best)]


def _median_text(values: Sequence[float]) -> str:
    median, low, high = bootstrap_median(values)
    return f"{_fmt(median)} [{_fmt(low)}, {_fmt(high)}]"


def match_summary(match: Match) -> dict[str, Any]:
    """The numbers of a :class:`Match` for ``views.json`` and the bench (inf written as None)."""
    median, low, high = bootstrap_median(list(match.ratios.values()))
    finite = (lambda v: v if v is not None and math.isfinite(v) else None)
    return {"search": match.search, "axis": match.axis, "seeds": sorted(match.ratios),
            "ratio_median": finite(median), "ratio_ci95": [finite(low), finite(high)],
            "ratios": {str(s): finite(r) for s, r in match.ratios.items()},
            "reached": sum(v is not None for v in match.bilevel_to_search.values()),
            "search_to_bilevel": {str(s): v for s, v in match.search_to_bilevel.items()},
            "bilevel_to_search": {str(s): v for s, v in match.bilevel_to_search.items()},
            "search_to_own_best": {str(s): v for s, v in match.search_to_own_best.items()}}


def write_views(comparison_dir: Path, out_dir: Path, bilevel: str, quality: Quality, tolerance: float = 0.0,
                title: str = "") -> dict[str, Path]:
    """``views.md`` (the three views), ``views.json`` (compute-to-match for the bench) and ``anytime.png`` of the
    comparison in ``comparison_dir`` into ``out_dir``."""
    traces = comparison_traces(comparison_dir)
    if bilevel not in traces:
        raise ValueError(f"{comparison_dir}: no finished run of the bilevel method {bilevel}")
    title = title or comparison_dir.name
    searches = [m for m, runs in traces.items() if m != bilevel and any(t.searched for t in runs.values())]
    seeds = sorted({seed for runs in traces.values() for seed in runs})
    parts = [f"# {title}: derived views\n",
             f"Computed from the stored trials in `{comparison_dir.name}/` (docs/results.md, derived views); quality "
             f"{quality.name} ({'higher' if quality.higher_is_better else 'lower'} is better) is always the reported "
             f"value (evaluation noise); seeds {seeds}; a method matches a quality within {tolerance:g}.\n",
             markdown("(a) The paper's table: each method at its own budget", paper_table(traces, quality),
                      {"method": "method", "seeds": "seeds", "quality": quality.name, **AXES})]
    if searches:
        parts.append(markdown(f"(b) Equal compute: each search's answer within the {bilevel} run's compute (same "
                              "seed)", equal_compute(traces, bilevel, quality),
                              {"method": "search", **{a: f"{quality.name} within its {label}"
                                                      for a, label in AXES.items()}}))
    summaries, detail = [], []
    for search in searches:
        for axis, label in AXES.items():
            match = compute_to_match(traces, bilevel, search, axis, tolerance)
            summaries.append(match_summary(match))
            reached = [v for v in match.search_to_bilevel.values() if v is not None]
            detail.append({"search": search, "axis": label,
                           "search_to_bilevel": f"{len(reached)}/{len(match.search_to_bilevel)} seeds"
                           + (f", median {_fmt(statistics.median(reached))}" if reached else ""),
                           "bilevel_to_search": f"{summaries[-1]['reached']}/{len(match.bilevel_to_search)} seeds",
                           "ratio": _median_text(list(match.ratios.values()))})
            detail += [{"search": "", "axis": f"seed {row['seed']}", "search_to_bilevel": row["search_to_bilevel"],
                        "bilevel_to_search": row["bilevel_to_search"],
                        "ratio": row["ratio"]} for row in match_rows(match, quality)]
    if searches:
        parts.append(markdown(
            f"(c) Compute-to-match: the search's compute to first reach the {bilevel} run's quality, the {bilevel} "
            f"run's compute where it reached the search's final quality, and their ratio to the search's compute to "
            f"its own final answer (median over seeds [95% bootstrap interval]; not reached = inf)", detail,
            {"search": "search", "axis": "compute", "search_to_bilevel": f"search reaches {bilevel}",
             "bilevel_to_search": f"{bilevel} reaches search", "ratio": f"{bilevel} / search compute"}))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "views.md").write_text("\n".join(parts))
    (out_dir / "views.json").write_text(json.dumps({"bilevel": bilevel, "tolerance": tolerance,
                                                    "quality": quality.name, "matches": summaries}, indent=1) + "\n")
    curves = {axis: {m: [(t.compute[axis], [quality.shown(o) for o in t.objective]) for t in traces[m].values()]
                     for m in searches} for axis in AXES}
    points = {axis: {m: [(t.compute[axis][-1], quality.shown(t.final)) for t in runs.values()]
                     for m, runs in traces.items() if m not in searches} for axis in AXES}
    figure = plot_anytime(curves, points, AXES, f"reported {quality.name}", out_dir / "anytime.png",
                          title=f"{title}: answer's quality against the compute spent")
    return {"views": out_dir / "views.md", "views_json": out_dir / "views.json", "anytime": figure}
