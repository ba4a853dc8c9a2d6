"""``make reproduce MODE=smoke|quick|full``: the paper's comparisons (Tables 1 and 2) as Hydra multiruns.

A plan (``configs/reproduce_MODE.yaml``) lists *comparisons*: a task, an experiment preset, the bilevel method and
its baselines, run for every seed of the plan. A comparison is one or two multiruns of ``run.py``:

1. the bilevel method (and every baseline that takes no budget) over the seeds, one multirun per group of methods
   with the same ``method_overrides`` in the plan (e.g. a search's trial count at this size);
2. with ``budget_factor`` set, the search baselines (upper estimators with a ``timeout_s`` option) over the seeds,
   each with ``budget_factor`` x the bilevel runs' mean wall clock as its budget: equal compute at factor 1 (paper
   Sec. 3.2). Without it the searches run their configured number of trials in the first multirun (Scenario A,
   compared by sampler NFEs).

Every job writes the run contract (docs/usage.md) into ``RUNS/<comparison>/<method>/seed_<seed>`` and runs with
``resume=true``: a stopped reproduce continues where it stopped, and a finished job is not run again.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from bilevel_diffusion.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
#: where a job of a comparison writes, relative to the comparison's folder (resolved by Hydra per job)
JOB_SUBDIR = "${hydra:runtime.choices.upper_estimator}/seed_${seed}"


@dataclass
class Comparison:
    """One row group of Table 1 or 2: the bilevel method and its baselines on one task."""

    name: str
    task: str
    bilevel: str
    baselines: list[str]
    experiment: str | None = None
    budget_factor: float | None = None
    overrides: list[str] = field(default_factory=list)
    method_overrides: dict[str, list[str]] = field(default_factory=dict)  # per method, on top of ``overrides``
    minutes_per_job: float = 1.0  # planning estimate for the printed plan
    seeds: list[int] | None = None  # this comparison's seeds (None: the plan's)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.method_overrides) - set(self.methods))
        if unknown:
            raise ConfigError(f"comparison {self.name}: method_overrides names {unknown}, which it does not run "
                              f"(methods: {self.methods})")

    @property
    def methods(self) -> list[str]:
        return [self.bilevel, *self.baselines]


@dataclass
class Plan:
    mode: str
    seeds: list[int]
    comparisons: list[Comparison]
    estimate_note: str = ""

    def seeds_of(self, comparison: Comparison) -> list[int]:
        """The comparison's own seeds where it lists them, else the plan's."""
        return list(comparison.seeds) if comparison.seeds else self.seeds

    @property
    def num_jobs(self) -> int:
        return sum(len(self.seeds_of(c)) * len(c.methods) for c in self.comparisons)

    @property
    def estimate_minutes(self) -> float:
        return sum(len(self.seeds_of(c)) * len(c.methods) * c.minutes_per_job for c in self.comparisons)


def load_plan(mode: str, plan_dir: Path = ROOT / "configs") -> Plan:
    """The plan of ``mode`` (``configs/reproduce_<mode>.yaml``; not a config group, so Hydra never composes it)."""
    path = plan_dir / f"reproduce_{mode}.yaml"
    if not path.exists():
        known = sorted(p.stem.removeprefix("reproduce_") for p in plan_dir.glob("reproduce_*.yaml"))
        raise ConfigError(f"no reproduce plan {path}; MODE must be one of {known}")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    seeds = [int(s) for s in raw.get("seeds", [])]
    if not seeds:
        raise ConfigError(f"{path}: `seeds` must list at least one seed")
    comparisons = [Comparison(name=name, **spec) for name, spec in raw["comparisons"].items()]
    return Plan(mode=mode, seeds=seeds, comparisons=comparisons, estimate_note=raw.get("estimate_note", ""))


def describe(plan: Plan, runs_dir: Path) -> str:
    """The printed plan: every comparison's jobs and the time estimate."""
    lines = [f"reproduce MODE={plan.mode}: {plan.num_jobs} jobs, seeds {plan.seeds}, runs under {runs_dir}"]
    for c in plan.comparisons:
        budget = (f"; search budget = {c.budget_factor:g} x the bilevel wall clock" if c.budget_factor else "")
        experiment = f" experiment={c.experiment}" if c.experiment else ""
        lines.append(f"  {c.name}: task={c.task}{experiment} bilevel={c.bilevel} "
                     f"baselines={','.join(c.baselines)} ({len(c.methods) * len(plan.seeds_of(c))} jobs, "
                     f"~{c.minutes_per_job:g} min each{budget})")
    lines.append(f"estimate: ~{plan.estimate_minutes:.0f} min ({plan.estimate_minutes / 60:.1f} h). "
                 f"{plan.estimate_note}".rstrip())
    return "\n".join(lines)


def takes_budget(method: str) -> bool:
    """Whether the upper estimator ``method`` is a search with a wall-clock budget (``timeout_s``)."""
    path = ROOT / "configs" / "upper_estimator" / f"{method}.yaml"
    return path.exists() and "timeout_s" in OmegaConf.load(path)


def multirun_command(comparison: Comparison, methods: Sequence[str], seeds: Sequence[int], runs_dir: Path,
                     extra: Sequence[str] = ()) -> list[str]:
    """``run.py -m`` over ``methods`` x ``seeds`` of ``comparison`` into ``runs_dir/<comparison>/``; the methods
    share their ``method_overrides`` (see :func:`by_overrides`), passed as ``++key=value``: Hydra checks a sweep's
    fixed overrides against the task's default estimator, which may not have the key."""
    experiment = [f"experiment={comparison.experiment}"] if comparison.experiment else []
    shared = [o if o.startswith(("+", "~")) else f"++{o}" for o in comparison.method_overrides.get(methods[0], [])]
    return [sys.executable, str(ROOT / "run.py"), "-m", f"task={comparison.task}", *experiment,
            f"upper_estimator={','.join(methods)}", f"seed={','.join(str(s) for s in seeds)}", *comparison.overrides,
            *shared, *extra, "resume=true",
            f"hydra.sweep.dir={runs_dir / comparison.name}", f"hydra.sweep.subdir={JOB_SUBDIR}"]


def by_overrides(comparison: Comparison, methods: Sequence[str]) -> list[list[str]]:
    """``methods`` grouped by identical ``method_overrides`` (in order): one multirun per group."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for method in methods:
        groups.setdefault(tuple(comparison.method_overrides.get(method, [])), []).append(method)
    return list(groups.values())


def mean_wall_clock(runs_dir: Path, comparison: Comparison, method: str, seeds: Sequence[int]) -> float:
    """Mean ``wall_clock_s`` of ``method``'s finished runs in ``comparison``."""
    paths = [runs_dir / comparison.name / method / f"seed_{s}" / "summary.json" for s in seeds]
    missing = [str(p.parent) for p in paths if not p.exists()]
    if missing:
        raise RuntimeError(f"the bilevel runs did not finish: {missing}")
    return statistics.fmean(json.loads(p.read_text())["wall_clock_s"] for p in paths)


def run_comparison(comparison: Comparison, seeds: Sequence[int], runs_dir: Path, extra: Sequence[str] = (),
                   runner: Callable[[list[str]], None] | None = None) -> None:
    """The bilevel method and the unbudgeted baselines, then the budgeted searches; one multirun per group of
    methods with the same ``method_overrides``."""
    runner = runner or (lambda command: subprocess.run(command, cwd=ROOT, check=True))
    budgeted = [m for m in comparison.baselines if comparison.budget_factor and takes_budget(m)]
    for group in by_overrides(comparison, [m for m in comparison.methods if m not in budgeted]):
        runner(multirun_command(comparison, group, seeds, runs_dir, extra))
    if budgeted:
        budget = comparison.budget_factor * mean_wall_clock(runs_dir, comparison, comparison.bilevel, seeds)
        for group in by_overrides(comparison, budgeted):
            runner(multirun_command(comparison, group, seeds, runs_dir,
                                    [*extra, f"++upper_estimator.timeout_s={budget:.0f}"]))
