"""One job: check the config, prepare the run directory, instantiate the task and the upper estimator (the one
place where config groups become objects), and run the task with the estimator (docs/usage.md: the run contract)."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from bilevel_diffusion import distributed
from bilevel_diffusion.preflight import check_config
from bilevel_diffusion.run_directory import (RunLock, check_fingerprint, fingerprint, guard_run_dir, identity,
                                             remove_if_empty, remove_stale_temp_files, write_fingerprint)
from bilevel_diffusion.runtime import RunContext, seed_everything, select_device
from bilevel_diffusion.task import check_pair
from bilevel_diffusion.tracking.recorder import Recorder


@contextmanager
def _writable_dir(run_dir: Path) -> Iterator[Path]:
    """The run directory on rank 0; a throwaway folder on the other DDP ranks (only rank 0 writes results)."""
    if distributed.is_main():
        yield run_dir
        return
    with tempfile.TemporaryDirectory(prefix=f"bilevel-rank{distributed.rank()}-") as scratch:
        yield Path(scratch)


def group_options(config_dir: Path, group: str) -> dict[str, type]:
    """Every option of a component group (``upper_estimator``, ``lower_solver``) and its class (an option without
    ``_target_`` inherits its defaults')."""
    def target(name: str) -> str:
        node = OmegaConf.load(config_dir / group / f"{name}.yaml")
        if "_target_" in node:
            return str(node["_target_"])
        parents = [entry for entry in node.get("defaults", []) if isinstance(entry, str) and entry != "_self_"]
        return target(parents[-1])
    return {path.stem: get_class(target(path.stem)) for path in sorted((config_dir / group).glob("*.yaml"))}


def check_task_components(cfg: DictConfig, config_dir: Path) -> None:
    """The task must take the upper estimator (``Task.accepts``) and the lower solver (``Task.solvers``): refused
    with one line before any work."""
    choices = HydraConfig.get().runtime.choices
    task_cls = get_class(cfg.task._target_)
    for group in ("upper_estimator", "lower_solver"):
        option = choices.get(group) or cfg[group].get("name", "?")
        check_pair(task_cls, get_class(cfg[group]._target_), cfg.task.name, option,
                   lambda group=group: group_options(config_dir, group), group)


def _claim_run_dir(cfg: DictConfig, run_dir: Path) -> RunLock | None:
    """Lock the run directory (rank 0), then check that it holds no other run."""
    lock = RunLock(run_dir).acquire() if distributed.is_main() else None
    try:
        guard_run_dir(run_dir, bool(cfg.resume))
        if cfg.resume:
            check_fingerprint(run_dir, cfg)
    except BaseException:
        _give_up(lock, run_dir)
        raise
    return lock


def _give_up(lock: RunLock | None, run_dir: Path) -> None:
    """A refused job leaves nothing behind: drop the lock and remove the directory Hydra made for it if unused."""
    if lock is not None:
        lock.release()
    remove_if_empty(run_dir)


def _write_hydra_files(run_dir: Path, cfg: DictConfig) -> None:
    """``.hydra/{config,hydra,overrides}.yaml`` as Hydra writes them, but only once the job's checks passed
    (``hydra.output_subdir`` is null so that Hydra itself writes nothing into a directory it may not use)."""
    hydra_cfg = HydraConfig.get()
    folder = run_dir / ".hydra"
    folder.mkdir(exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), folder / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(hydra_cfg.overrides.task)), folder / "overrides.yaml")


def run_job(cfg: DictConfig, config_dir: Path) -> float:
    """Run ``cfg.task`` with ``cfg.upper_estimator`` and write the run contract; returns the objective (lower is
    better). Every check, and the construction of every component, comes before the first file is written."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        check_task_components(cfg, config_dir)
        check_config(cfg)
    except BaseException:
        _give_up(None, run_dir)
        raise
    device, dtype = select_device(cfg.hardware)  # joins a DDP group first: every rank checks before anyone writes
    run_dir = distributed.broadcast(run_dir)  # ranks' ${now:} may differ
    lock = _claim_run_dir(cfg, run_dir)
    try:
        if cfg.resume and (run_dir / "summary.json").exists():  # finished already: resuming it is a no-op
            objective = float(json.loads((run_dir / "summary.json").read_text())["objective"])
            print(f"{run_dir} holds a finished run (objective={objective:.4f}); nothing to resume")
            return objective if math.isfinite(objective) else float("inf")
        try:
            seed_everything(int(cfg.seed))
            estimator = instantiate(cfg.upper_estimator)
            task = instantiate(cfg.task)
        except BaseException:
            _give_up(lock, run_dir)
            lock = None
            raise
        return _run(cfg, run_dir, device, dtype, estimator, task)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg: DictConfig, run_dir: Path, device, dtype, estimator, task) -> float:
    """The job once its run directory is claimed and its components are built."""
    if distributed.is_main():
        remove_stale_temp_files(run_dir)
        write_fingerprint(run_dir, cfg)
        _write_hydra_files(run_dir, cfg)
    distributed.barrier()
    exit_code, main_rank = 1, distributed.is_main()
    with _writable_dir(run_dir) as own_dir:
        hydra_cfg = HydraConfig.get()
        sweep = Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else None
        # the jobs of a sweep are one W&B group unless logger.group names one
        recorder = Recorder(own_dir, cfg, cfg.logger if main_rank else None,
                            job_name=f"{task.name}-{cfg.upper_estimator.name}-s{cfg.seed}",
                            group=sweep, resume=bool(cfg.resume))
        ctx = RunContext(run_dir=own_dir, cache_dir=Path(cfg.paths.cache_dir), device=device, dtype=dtype,
                         seed=int(cfg.seed), resume=bool(cfg.resume), recorder=recorder, shared_dir=run_dir)
        try:
            result = task.run(estimator, ctx)
            summary = recorder.write_summary({"task": task.name, "method": cfg.upper_estimator.name,
                                              "seed": ctx.seed, "wall_clock_s": recorder.wall_clock(), **result,
                                              "config_fingerprint": fingerprint(identity(cfg))})
            exit_code = 0
        finally:
            recorder.close(exit_code)
            distributed.close()
    objective = float(summary["objective"])
    if main_rank:
        images = ", ".join(sorted(p.name for p in run_dir.glob("*.png")))
        named = "  ".join(f"{key}={summary[key]:.4g}" for key in getattr(task, "headline", ())
                          if isinstance(summary.get(key), (int, float)))
        print(f"[{task.name} / {cfg.upper_estimator.name}] {named + '  ' if named else ''}objective={objective:.4g}\n"
              f"  summary: {run_dir / 'summary.json'}\n  metrics: {run_dir / 'metrics.jsonl'}\n"
              f"  images:  {run_dir}/{{{images}}}")
    return objective if math.isfinite(objective) else float("inf")
