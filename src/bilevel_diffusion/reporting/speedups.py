"""How much cheaper the bilevel method is than search at reaching the same quality, from ``make reproduce`` runs.

- Scenario B (paper Sec. 3.2): wall clock of the bilevel run over the wall clock Bayesian search needed to reach its
  best reported FID, for the seeds where the bilevel run's reported FID is at least as good (target <= 1/5). Only
  the bilevel run's final FID is measured, so its whole wall clock counts (an upper bound on its time to reach).
- Scenario A (paper Sec. 3.1, Table 1): sampler NFEs the bilevel method spent choosing lambda over those of the
  search (grid or Bayesian) whose chosen lambda scored the best r1, for the seeds where the bilevel method's r1 is
  within ``r1_tol`` of it (target <= 1/4). Every method is scored by the same reported evaluation (fixed noise).

Reads only the run contract (docs/usage.md) under ``RUNS/<comparison>/<method>/seed_<seed>/``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bilevel_diffusion.reporting.run_files import read_summary
from bilevel_diffusion.reporting.schedule_comparison import fid_over_wall_clock


@dataclass
class Speedup:
    """Per-seed ratios of bilevel cost to search cost, where the bilevel method reached the search's quality."""

    ratios: dict[int, float] = field(default_factory=dict)
    missed: dict[int, str] = field(default_factory=dict)  # seed -> why the bilevel method did not reach it

    @property
    def median(self) -> float | None:
        return statistics.median(self.ratios.values()) if self.ratios else None

    def describe(self) -> str:
        seeds = len(self.ratios) + len(self.missed)
        text = f"reached in {len(self.ratios)}/{seeds} seeds"
        return text + "".join(f"; seed {s}: {why}" for s, why in sorted(self.missed.items()))


def _seeds(comparison_dir: Path, *methods: str) -> list[int]:
    """Seeds for which every one of ``methods`` has a finished run."""
    per_method = [{int(p.parent.name.removeprefix("seed_")) for p in (comparison_dir / m).glob("seed_*/summary.json")}
                  for m in methods]
    return sorted(set.intersection(*per_method)) if per_method else []


def time_to_bayesian_best(comparison_dir: Path, bilevel: str = "zeroth_order",
                          search: str = "bayesian") -> Speedup:
    """Scenario B: bilevel wall clock / the search's wall clock to its best reported FID, per seed."""
    result = Speedup()
    for seed in _seeds(comparison_dir, bilevel, search):
        ours = read_summary(comparison_dir / bilevel / f"seed_{seed}")
        curve = fid_over_wall_clock(comparison_dir / search / f"seed_{seed}")
        best_fid = curve[-1][1]
        reached_at = next(seconds for seconds, fid in curve if fid <= best_fid)
        if ours["fid"] <= best_fid:
            result.ratios[seed] = ours["wall_clock_s"] / reached_at
        else:
            result.missed[seed] = f"FID {ours['fid']:.4g} > {search}'s best {best_fid:.4g}"
    return result


def nfe_to_best_search(comparison_dir: Path, bilevel: str = "closed_form",
                       searches: tuple[str, ...] = ("grid", "bayesian"), r1_tol: float = 0.05) -> Speedup:
    """Scenario A: bilevel method NFEs / NFEs of the search with the best reported r1, per seed."""
    result = Speedup()
    for seed in _seeds(comparison_dir, bilevel, *searches):
        ours = read_summary(comparison_dir / bilevel / f"seed_{seed}")
        best = max((read_summary(comparison_dir / s / f"seed_{seed}") for s in searches), key=lambda s: s["r1"])
        if ours["r1"] >= best["r1"] - r1_tol:
            result.ratios[seed] = ours["method_nfe"] / best["method_nfe"]
        else:
            result.missed[seed] = f"r1 {ours['r1']:.4g} < {best['method']}'s {best['r1']:.4g} - {r1_tol:g}"
    return result
