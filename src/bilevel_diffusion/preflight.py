"""Checks of the command line that need no heavy imports. :func:`check_command_line` runs in ``run.py`` before Hydra
composes the job, so bad input fails in about a second with one ``error:`` line and nothing written
(``docs/reliability.md``); :func:`check_config` and the run-directory checks run again inside every job (sweeps).

- every ``group=option`` names an existing option (with a "did you mean"), every ``key=value`` an existing key;
- every per-task preset file (``task_preset/<experiment>/<task>.yaml``) names an existing experiment and task, and
  every per-estimator one (``estimator_preset/<task>/<upper_estimator>.yaml``) an existing task and estimator;
- a value keeps the type of its default (``lower_solver.lr=abc`` is refused) and lies in its range;
- the run directory is writable, holds no other run (unless ``resume=true`` with the same config) and no live job.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.tracking.credentials import wandb_credentials_found
from bilevel_diffusion.run_directory import check_fingerprint, check_unlocked, check_writable, guard_run_dir

#: config groups chosen by a preset, not by the user (their option names are interpolated)
_INTERNAL_GROUPS = ("hydra", "task_preset", "estimator_preset")
_PLAIN_VALUE = re.compile(r"^[\w.-]+(,[\w.-]+)*$")
#: command-line flags after which Hydra runs no job
_NO_JOB_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
                 "--resolve", "--package", "-p")
#: integer settings and their least value, wherever they appear in the config
_INT_AT_LEAST = {"batch_size": 1, "num_inference_steps": 1, "log_every": 1, "n_trials": 1, "num_directions": 1,
                 "num_steps": 0, "checkpoint_every": 0, "pool_samples": 2, "trial_samples": 2, "num_samples": 2,
                 "seed": 0, "grid_size": 0, "obj_batch_size": 1, "obj_inference_steps": 1, "n_obj": 1}
_MAX_SAMPLES = 1_000_000
_POSITIVE_FLOATS = ("lr", "lr_z", "schedule_lr", "timeout_s")


def config_groups(config_dir: Path) -> dict[str, list[str]]:
    """``{group: [option, ...]}`` for the user-facing config groups under ``config_dir``."""
    return {path.name: sorted(p.stem for p in path.glob("*.yaml"))
            for path in sorted(config_dir.iterdir()) if path.is_dir() and path.name not in _INTERNAL_GROUPS}


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]}? " if close else ""


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
    for path in sorted((config_dir / "estimator_preset").glob("*/*.yaml")):
        task, estimator = path.parent.name, path.stem
        if task not in groups["task"] or estimator not in groups["upper_estimator"]:
            raise ConfigError(f"{path.relative_to(config_dir)} matches no run: task={task!r} and "
                              f"upper_estimator={estimator!r} must be options of configs/task and "
                              f"configs/upper_estimator")


def check_options(overrides: dict[str, str], groups: dict[str, list[str]]) -> None:
    """Unknown options of a config group (``task=nope``, ``upper_estimator=a,nope``)."""
    for key, value in overrides.items():
        group = key.split("@", 1)[0]
        if group not in groups or not _PLAIN_VALUE.match(value):  # sweeps like choice(...) are left to Hydra
            continue
        unknown = [option for option in value.split(",") if option != "null" and option not in groups[group]]
        if unknown:
            raise ConfigError(f"unknown {group} {unknown[0]!r}; {_did_you_mean(unknown[0], groups[group])}"
                              f"choose one of: {', '.join(groups[group])}")


def compose(config_dir: Path, overrides: Sequence[str]) -> DictConfig:
    """The job's config as Hydra composes it (with the ``hydra`` node); composition errors become one line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException

    try:
        with initialize_config_dir(str(config_dir.resolve()), version_base="1.3"):
            return hydra_compose("config", overrides=list(overrides), return_hydra_config=True)
    except ConfigCompositionException as err:
        raise ConfigError(_composition_message(err, config_dir, overrides)) from None


def _composition_message(err: Exception, config_dir: Path, overrides: Sequence[str]) -> str:
    text = str(err).splitlines()[0]
    match = re.match(r"Could not (?:override|append to|delete) '([^']+)'", text)
    if not match:
        return text
    key = match.group(1)
    if "append" in text:
        return f"{key} already exists; set it with {key}=VALUE"
    rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    try:
        node: Any = compose(config_dir, rest)
    except ConfigError:
        node = None
    parts = key.split(".")
    for depth, part in enumerate(parts):  # the first part of the key that does not exist
        if not isinstance(node, DictConfig) or part not in node:
            break
        node = node[part]
    choices = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
    close = difflib.get_close_matches(part, choices, n=1, cutoff=0.6)
    hint = f"did you mean {'.'.join(parts[:depth] + [close[0]])}? " if close else ""
    return f"unknown key {key}; {hint}(+{key}=VALUE adds a new key)"


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, DictConfig):
        for key in node.keys():
            try:
                value = node[key]
            except Exception:  # noqa: BLE001 - an interpolation that needs the running job (hydra:...)
                continue
            yield from _leaves(value, f"{prefix}{key}.")
    elif not isinstance(node, ListConfig):
        yield prefix.rstrip("."), node


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_types(cfg: DictConfig, defaults: DictConfig, keys: Sequence[str]) -> None:
    """Each overridden ``key`` keeps the type of its default (a number stays a number, an int an int)."""
    for key in keys:
        try:
            default, value = OmegaConf.select(defaults, key), OmegaConf.select(cfg, key)
        except Exception:  # noqa: BLE001 - unresolvable here; the job checks it
            continue
        if default is None or value is None or isinstance(default, (DictConfig, ListConfig, str)):
            continue
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif _is_int(default):
            ok, kind = _is_int(value), "an integer"
        else:
            ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        if not ok:
            raise ConfigError(f"{key} must be {kind} (got {value!r})")


def check_config(cfg: DictConfig) -> None:
    """Ranges of the settings every loop reads, wherever they appear (integers that must be integers, counts,
    learning rates, sample sizes)."""
    for key, value in _leaves(cfg):
        top, leaf = key.split(".", 1)[0], key.rsplit(".", 1)[-1]
        if top in ("hydra", "paths", "logger") or value is None:
            continue
        if leaf in _INT_AT_LEAST:
            least = _INT_AT_LEAST[leaf]
            if not _is_int(value) or value < least:
                raise ConfigError(f"{key} must be an integer >= {least} (got {value!r})")
            if leaf == "num_samples" and value > _MAX_SAMPLES:
                raise ConfigError(f"{key} must be at most {_MAX_SAMPLES:,} (got {value:,})")
        elif leaf in _POSITIVE_FLOATS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ConfigError(f"{key} must be a number > 0 (got {value!r})")


def check_logger(cfg: DictConfig) -> None:
    """``logger=wandb logger.mode=online`` needs credentials, unless ``logger.fallback_offline=true``."""
    logger = cfg.get("logger") or {}
    if (logger.get("backend") == "wandb" and logger.get("mode") == "online" and not logger.get("fallback_offline")
            and not wandb_credentials_found()):
        raise ConfigError("logger.mode=online needs W&B credentials (wandb login, or WANDB_API_KEY) and none were "
                          "found; use logger.mode=offline (sync later) or logger.fallback_offline=true")


def check_run_dir(run_dir: Path, cfg: DictConfig) -> None:
    """Writable; no other run's results unless ``resume=true`` with the same config; no live job in it."""
    check_writable(run_dir)
    guard_run_dir(run_dir, bool(cfg.resume))
    if bool(cfg.resume):
        check_fingerprint(run_dir, cfg)
    check_unlocked(run_dir)


#: at most this many combinations of swept group options are composed and checked before a multirun starts
_MAX_SWEEP_CHECKS = 32


def _group(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _check_values(config_dir: Path, groups: Mapping[str, Any], args: list[str]) -> DictConfig:
    """Compose ``args`` and check types, ranges and the logger; returns the composed config."""
    cfg = compose(config_dir, args)
    group_args = [arg for arg in args if _group(arg) in groups]
    values = [arg.split("=", 1)[0].lstrip("+~") for arg in args
              if "=" in arg and not arg.startswith("~") and arg not in group_args
              and not arg.split("=", 1)[0].lstrip("+").startswith("hydra.")]
    check_types(cfg, compose(config_dir, group_args) if values else cfg, values)
    check_config(cfg)
    check_logger(cfg)
    return cfg


def check_command_line(argv: Sequence[str], config_dir: Path) -> None:
    """Everything about one ``run.py`` command line that can be checked without running it (see module doc)."""
    groups = config_groups(config_dir)
    check_presets(config_dir, groups)
    overrides = _overrides(argv)
    check_options(overrides, groups)
    if any(arg.split("=", 1)[0] in _NO_JOB_FLAGS for arg in argv):
        return
    multirun = any(arg in ("-m", "--multirun") for arg in argv)
    args = [arg for arg in argv if not arg.startswith("-")]
    plain = [arg for arg in args if _PLAIN_VALUE.match(arg.split("=", 1)[-1]) or "${" in arg or "/" in arg]
    if multirun:  # the fixed values, with every combination of the swept group options; each job checks the rest
        fixed = [arg for arg in plain if "," not in arg.split("=", 1)[-1]]
        swept = [[f"{arg.split('=', 1)[0]}={option}" for option in arg.split("=", 1)[1].split(",")]
                 for arg in plain if "," in arg.split("=", 1)[-1] and _group(arg) in groups]
        for combination in itertools.islice(itertools.product(*swept), _MAX_SWEEP_CHECKS):
            _check_values(config_dir, groups, [*fixed, *combination])
        return
    cfg = _check_values(config_dir, groups, args)
    try:
        run_dir = Path(str(OmegaConf.select(cfg, "hydra.run.dir")))
    except Exception:  # noqa: BLE001 - a run dir that needs the running job's values: the job checks it
        return
    check_run_dir(run_dir, cfg)
