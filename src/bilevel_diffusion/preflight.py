"""Checks that need no heavy imports, run before Hydra composes the job (so bad input fails in about a second,
before Hydra writes ``.hydra/`` into an occupied run directory) and again inside the job.

- :func:`check_overrides`: every ``group=option`` on the command line names an existing option of a config group,
  and every per-task preset file (``task_preset/<experiment>/<task>.yaml``) names an existing experiment and task;
- :func:`guard_run_dir`: a run directory holding another run's results is refused unless ``resume=true``;
- :func:`check_config`: settings shared by every task (``eval.num_samples``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from bilevel_diffusion.errors import ConfigError

#: files that mean "this directory already holds a run's results"
RESULT_MARKERS = ("metrics.jsonl", "summary.json", "checkpoints")
#: config groups chosen by a preset, not by the user (their option names are interpolated)
_INTERNAL_GROUPS = ("hydra", "task_preset")
_PLAIN_VALUE = re.compile(r"^[\w.-]+(,[\w.-]+)*$")


def guard_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to write over another run's results unless ``resume=true``."""
    taken = [name for name in RESULT_MARKERS if (run_dir / name).exists()]
    if taken and not resume:
        raise ConfigError(f"{run_dir} already holds a run ({', '.join(taken)}); pass resume=true to continue it "
                          f"or choose another hydra.run.dir")


def config_groups(config_dir: Path) -> dict[str, list[str]]:
    """``{group: [option, ...]}`` for the user-facing config groups under ``config_dir``."""
    return {path.name: sorted(p.stem for p in path.glob("*.yaml"))
            for path in sorted(config_dir.iterdir()) if path.is_dir() and path.name not in _INTERNAL_GROUPS}


def _overrides(argv: Sequence[str]) -> dict[str, str]:
    """``key=value`` command-line overrides (the last one wins), keys without ``+``/``~`` prefixes."""
    pairs = (arg.split("=", 1) for arg in argv if "=" in arg and not arg.startswith("-"))
    return {key.lstrip("+~"): value for key, value in pairs}


def check_presets(config_dir: Path, groups: dict[str, list[str]]) -> None:
    """A preset that would match nothing (``task_preset/<experiment>/<task>.yaml`` with a misspelt experiment or
    task) is an error, not a silent no-op."""
    for path in sorted((config_dir / "task_preset").glob("*/*.yaml")):
        experiment, task = path.parent.name, path.stem
        if experiment not in groups["experiment"] or task not in groups["task"]:
            raise ConfigError(f"{path.relative_to(config_dir)} matches no run: experiment={experiment!r} and "
                              f"task={task!r} must be options of configs/experiment and configs/task")


def check_overrides(argv: Sequence[str], config_dir: Path) -> None:
    """Unknown options of a config group (``task=nope``, ``upper_estimator=a,nope``), a preset that matches nothing
    and an occupied explicit ``hydra.run.dir`` are one :class:`ConfigError` each."""
    groups = config_groups(config_dir)
    check_presets(config_dir, groups)
    overrides = _overrides(argv)
    for key, value in overrides.items():
        group = key.split("@", 1)[0]
        if group not in groups or not _PLAIN_VALUE.match(value):  # sweeps like choice(...) are left to Hydra
            continue
        unknown = [option for option in value.split(",") if option != "null" and option not in groups[group]]
        if unknown:
            raise ConfigError(f"unknown {group} {unknown[0]!r}; choose one of: {', '.join(groups[group])}")
    run_dir = overrides.get("hydra.run.dir")
    multirun = any(arg in ("-m", "--multirun") for arg in argv)
    if run_dir and "${" not in run_dir and not multirun:
        guard_run_dir(Path(run_dir), overrides.get("resume", "false").lower() == "true")


def check_config(cfg: DictConfig) -> None:
    """Settings every task reads: at least two reported samples (FID needs two)."""
    num_samples = int(cfg.eval.num_samples)
    if num_samples < 2:
        raise ConfigError(f"eval.num_samples must be >= 2, FID needs two samples (got {num_samples})")
