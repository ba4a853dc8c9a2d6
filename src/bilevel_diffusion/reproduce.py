"""``make reproduce MODE=smoke|quick|full``: the paper's comparisons (Tables 1 and 2) as Hydra multiruns.

A plan (``configs/reproduce_MODE.yaml``) lists *comparisons*: a task, an experiment preset, the bilevel method and
its baselines, run for every seed of the plan. A comparison is a few multiruns of ``run.py`` (:func:`plan_commands`),
each method with its ``method_overrides`` in the plan (e.g. a search's trial count). Every method runs at its *own*
budget (the searches their configured trials, as the paper ran them), never one derived from another method's run:
the multiruns are independent, so ``--jobs N`` runs N of them at once (each in its own process); one at a time they
run in this process, which imports torch and diffusers once instead of once per multirun. Equal-compute and
compute-to-match views are derived afterwards from the stored trials (:mod:`bilevel_diffusion.reporting.views`).

Every job writes the run contract (docs/usage.md) into ``RUNS/<comparison>/<method>/seed_<seed>`` and runs with
``resume=true``: a stopped reproduce continues where it stopped, and a finished job is not run again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import runpy
import statistics
import subprocess
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    overrides: list[str] = field(default_factory=list)
    method_overrides: dict[str, list[str]] = field(default_factory=dict)  # per method, on top of ``overrides``
    # planning estimate per job (one number, or one per method) where no job of the method has finished: the printed
    # plan and, with several jobs at a time, which multiruns go first
    minutes_per_job: float | dict[str, float] = 1.0
    seeds: list[int] | None = None  # this comparison's seeds (None: the plan's)
    match_tolerance: float = 0.0  # compute-to-match: a method matches a quality within this (objective units)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.method_overrides) - set(self.methods))
        if unknown:
            raise ConfigError(f"comparison {self.name}: method_overrides names {unknown}, which it does not run "
                              f"(methods: {self.methods})")
        if isinstance(self.minutes_per_job, Mapping) and set(self.minutes_per_job) != set(self.methods):
            raise ConfigError(f"comparison {self.name}: minutes_per_job must name every method it runs "
                              f"({self.methods}), got {sorted(self.minutes_per_job)}")

    def planned_minutes(self, method: str) -> float:
        """The plan's minutes per job of ``method``."""
        if isinstance(self.minutes_per_job, Mapping):
            return float(self.minutes_per_job[method])
        return float(self.minutes_per_job)

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

    def job_minutes(self, comparison: Comparison, method: str, runs_dir: Path | None = None) -> tuple[float, bool]:
        """Minutes per job of ``method`` in ``comparison``: the mean wall clock of its finished jobs under
        ``runs_dir`` where any exist (True), else the plan's ``minutes_per_job`` (False)."""
        if runs_dir is not None:
            done = [json.loads(p.read_text())["wall_clock_s"]
                    for p in (runs_dir / comparison.name / method).glob("seed_*/summary.json")]
            if done:
                return statistics.fmean(done) / 60, True
        return comparison.planned_minutes(method), False

    def estimate_minutes(self, runs_dir: Path | None = None) -> float:
        """Total minutes of every job of the plan, one at a time (measured per-job times where they exist)."""
        return sum(len(self.seeds_of(c)) * self.job_minutes(c, m, runs_dir)[0]
                   for c in self.comparisons for m in c.methods)

    def finished_jobs(self, runs_dir: Path) -> list[tuple[str, str, int]]:
        """(comparison, method, seed) of every job of the plan with a ``summary.json`` under ``runs_dir``."""
        return [(c.name, m, s) for c in self.comparisons for m in c.methods for s in self.seeds_of(c)
                if (runs_dir / c.name / m / f"seed_{s}" / "summary.json").exists()]

    def remaining_minutes(self, runs_dir: Path) -> float:
        """:meth:`estimate_minutes` less the jobs already finished under ``runs_dir``."""
        by_name = {c.name: c for c in self.comparisons}
        return self.estimate_minutes(runs_dir) - sum(self.job_minutes(by_name[c], m, runs_dir)[0]
                                                     for c, m, _ in self.finished_jobs(runs_dir))


def results_dir(mode: str, root: Path = ROOT) -> Path:
    """Where ``make reproduce MODE=mode`` writes its tables and figures: ``results/`` for quick (the README's
    Results), ``results/<mode>/`` for every other mode, so that no mode overwrites another's tables."""
    return root / "results" / ("" if mode == "quick" else mode)


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


def describe(plan: Plan, runs_dir: Path, jobs: int = 1) -> str:
    """The printed plan: every comparison's jobs and the time estimate (per-job minutes measured under
    ``runs_dir`` where jobs finished, marked ``measured``, else the plan's estimate)."""
    lines = [f"reproduce MODE={plan.mode}: {plan.num_jobs} jobs, seeds {plan.seeds}, runs under {runs_dir}"]
    measured_any = False
    for c in plan.comparisons:
        experiment = f" experiment={c.experiment}" if c.experiment else ""
        per_method = []
        for method in c.methods:
            minutes, measured = plan.job_minutes(c, method, runs_dir)
            measured_any |= measured
            per_method.append(f"{method} ~{minutes:.2g} min" + (" measured" if measured else ""))
        lines.append(f"  {c.name}: task={c.task}{experiment}, {len(plan.seeds_of(c))} seeds, bilevel={c.bilevel}; "
                     f"per job: {', '.join(per_method)}")
    total, finished = plan.estimate_minutes(runs_dir), len(plan.finished_jobs(runs_dir))
    note = "" if measured_any else plan.estimate_note
    lines.append(f"estimate: ~{total:.0f} min ({total / 60:.1f} h) one job at a time"
                 + (f", ~{total / jobs:.0f} min with --jobs {jobs}" if jobs > 1 else "") + f". {note}".rstrip())
    if finished:
        left = plan.remaining_minutes(runs_dir)
        lines.append(f"{finished} of {plan.num_jobs} jobs finished already (not run again): ~{left:.0f} min left"
                     + (f", ~{left / jobs:.0f} min with --jobs {jobs}" if jobs > 1 else ""))
    return "\n".join(lines)


def multirun_command(comparison: Comparison, methods: Sequence[str], seeds: Sequence[int], runs_dir: Path,
                     extra: Sequence[str] = ()) -> list[str]:
    """``run.py -m`` over ``methods`` x ``seeds`` of ``comparison`` into ``runs_dir/<comparison>/``; the methods
    share their ``method_overrides`` (see :func:`plan_commands`), passed as ``++key=value``: Hydra checks a sweep's
    fixed overrides against the task's default estimator, which may not have the key."""
    experiment = [f"experiment={comparison.experiment}"] if comparison.experiment else []
    shared = [o if o.startswith(("+", "~")) else f"++{o}" for o in comparison.method_overrides.get(methods[0], [])]
    return [sys.executable, str(ROOT / "run.py"), "-m", f"task={comparison.task}", *experiment,
            f"upper_estimator={','.join(methods)}", f"seed={','.join(str(s) for s in seeds)}", *comparison.overrides,
            *shared, *extra, "resume=true",
            f"hydra.sweep.dir={runs_dir / comparison.name}", f"hydra.sweep.subdir={JOB_SUBDIR}"]


def plan_commands(plan: Plan, runs_dir: Path, extra: Sequence[str] = (), jobs: int = 1) -> dict[str, list[str]]:
    """Every multirun of the plan, by label ``<comparison>.<method>[+<method>...]``. With ``jobs == 1`` the methods
    of a comparison with the same ``method_overrides`` share one multirun (one process start each); with more,
    each method is its own multirun and the longest go first (by :meth:`Plan.job_minutes`), so that the workers end
    close together. They depend on nothing but the plan (no method's budget comes from another's run), so they run
    in any order."""
    units: list[tuple[Comparison, list[str]]] = []
    for c in plan.comparisons:
        groups: dict[tuple[str, ...], list[str]] = {}
        for method in c.methods:
            key = tuple(c.method_overrides.get(method, [])) if jobs == 1 else (method,)
            groups.setdefault(key, []).append(method)
        units += [(c, group) for group in groups.values()]
    if jobs > 1:  # one method per unit: the longest first
        units.sort(key=lambda unit: -plan.job_minutes(unit[0], unit[1][0], runs_dir)[0] * len(plan.seeds_of(unit[0])))
    return {f"{c.name}.{'+'.join(group)}": multirun_command(c, group, plan.seeds_of(c), runs_dir, extra)
            for c, group in units}


def describe_comparisons(plan: Plan, runs_dir: Path) -> None:
    """``runs_dir/<comparison>/comparison.json``: what the derived views need to know about each comparison (its
    bilevel method and match tolerance; :mod:`bilevel_diffusion.reporting.views`)."""
    for c in plan.comparisons:
        (runs_dir / c.name).mkdir(parents=True, exist_ok=True)
        (runs_dir / c.name / "comparison.json").write_text(json.dumps(
            {"task": c.task, "bilevel": c.bilevel, "baselines": c.baselines, "match_tolerance": c.match_tolerance,
             "seeds": plan.seeds_of(c)}, indent=1) + "\n")


def run_plan(plan: Plan, runs_dir: Path, extra: Sequence[str] = (), jobs: int = 1,
             runner: Callable[[str, list[str]], None] | None = None) -> None:
    """Run :func:`plan_commands`: with ``jobs == 1`` one after another in this process (:func:`run_in_process`);
    with more, ``jobs`` processes at a time, each with ``hardware.num_threads`` = CPUs / ``jobs`` (unless ``extra``
    sets it) and its output in ``runs_dir/logs/<label>.log``. Raises after all ran if any failed (rerun to resume
    them); a multirun stopped by SIGINT / SIGTERM ends the plan at once with its exit status."""
    if jobs > 1 and not any(o.lstrip("+").startswith("hardware.num_threads=") for o in extra):
        extra = [*extra, f"++hardware.num_threads={max(1, (os.cpu_count() or 1) // jobs)}"]
    describe_comparisons(plan, runs_dir)
    commands = plan_commands(plan, runs_dir, extra, jobs)
    failed: dict[str, BaseException] = {}
    if jobs == 1:  # in the main thread: a run installs its signal handlers
        for label, command in commands.items():
            try:
                (runner or _run_here)(label, command)
            except Exception as err:  # noqa: BLE001 (reported below, after the other multiruns ran)
                failed[label] = err
    else:
        runner = runner or (lambda label, command: _run(command, runs_dir / "logs" / f"{label}.log"))
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            try:
                futures = {label: pool.submit(runner, label, command) for label, command in commands.items()}
                failed = {label: f.exception() for label, f in futures.items() if f.exception() is not None}
            except BaseException:  # Ctrl-C: the running multiruns got the signal too; start no other
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(commands)} multiruns failed ({', '.join(failed)}); rerun to "
                           f"resume them") from next(iter(failed.values()))


def run_in_process(arguments: Sequence[str]) -> int:
    """``python run.py ARGUMENTS`` in this process, from the repository root (the same code path; torch and
    diffusers, once imported, are not imported again); returns its exit status. Hydra runs a multirun's jobs one
    after another in one process in the same way."""
    argv, root = sys.argv, logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sys.argv = [str(ROOT / "run.py"), *arguments]
    try:
        with contextlib.chdir(ROOT):
            runpy.run_path(str(ROOT / "run.py"), run_name="__main__")
    except SystemExit as stop:
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
    finally:
        sys.argv = argv
        for handler in set(root.handlers) - set(handlers):  # Hydra's job logging (run.log) ends with the job
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    return 0


def _run_here(label: str, command: list[str]) -> None:
    """One multirun of :func:`plan_commands` in this process; a stopped one (exit 130 / 143) ends the plan."""
    try:
        status = run_in_process(command[2:])  # [python, run.py, arguments...]
    except Exception:  # noqa: BLE001 (HYDRA_FULL_ERROR=1 re-raises): print it, keep no frame (tensors) alive
        traceback.print_exc()
        status = 1
    if status in (130, 143):
        raise SystemExit(status)
    if status:
        raise subprocess.CalledProcessError(status, command)


def _run(command: list[str], log: Path) -> None:
    """One multirun in a process of its own, its output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.write(f"started: {log.stem} (output: {log})\n")  # one write: jobs print from several threads
    sys.stdout.flush()
    with log.open("a") as out:
        subprocess.run(command, cwd=ROOT, check=True, stdout=out, stderr=subprocess.STDOUT)
    sys.stdout.write(f"finished: {log.stem}\n")
    sys.stdout.flush()
