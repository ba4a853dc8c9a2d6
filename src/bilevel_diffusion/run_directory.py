"""A run directory belongs to one run (``docs/reliability.md``): a guard against writing over results, a config
fingerprint checked on ``resume=true``, a lock held for the life of the job, and clean-up of what a killed job left.

No torch import here: :mod:`bilevel_diffusion.preflight` runs these checks before Hydra writes anything.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bilevel_diffusion.errors import ConfigError

#: files that mean "this directory already holds a run's results"
RESULT_MARKERS = ("metrics.jsonl", "summary.json", "checkpoints")
FINGERPRINT_FILE = "fingerprint.json"
LOCK_FILE = ".lock"
#: top-level keys that may change on resume: they do not change what is computed
VOLATILE_KEYS = ("resume", "logger", "paths", "hydra")


def guard_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to write over another run's results unless ``resume=true``."""
    taken = [name for name in RESULT_MARKERS if (run_dir / name).exists()]
    if taken and not resume:
        raise ConfigError(f"{run_dir} already holds a run ({', '.join(taken)}); pass resume=true to continue it "
                          f"or choose another hydra.run.dir")


def check_writable(run_dir: Path) -> None:
    """The run directory is (or can be made) a writable folder."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"hydra.run.dir={run_dir} is a file, not a folder; choose another hydra.run.dir")
    existing = run_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot create hydra.run.dir={run_dir}: {existing} is a file; choose another hydra.run.dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write hydra.run.dir={run_dir}: {existing} is not writable; "
                          f"choose another hydra.run.dir")


# -- fingerprint ----------------------------------------------------------------------------------------------------
def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as ``{dotted.key: value}`` without the keys a resume may change (:data:`VOLATILE_KEYS`)."""
    kept = {str(key): cfg[key] for key in cfg.keys() if key not in VOLATILE_KEYS}
    return _flatten({key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
                     for key, value in kept.items()})


def fingerprint(flat: Mapping[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) of the canonical JSON of :func:`identity`."""
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    first = ("task.name", "upper_estimator.name", "seed")
    keys = sorted(set(old) | set(new), key=lambda k: (k not in first, k.count("."), k))
    missing = "(absent)"
    return [f"{key} {old.get(key, missing)!r} -> {new.get(key, missing)!r}" for key in keys
            if old.get(key, missing) != new.get(key, missing)]


def check_fingerprint(run_dir: Path, cfg: DictConfig) -> None:
    """On ``resume=true``: the run directory's stored config must equal this one (up to :data:`VOLATILE_KEYS`).
    Extending a run (more steps, other settings) is refused: it would mix two runs in one directory."""
    stored = run_dir / FINGERPRINT_FILE
    if not stored.exists():
        if any((run_dir / name).exists() for name in RESULT_MARKERS[1:]):
            raise ConfigError(f"{run_dir} holds results but no {FINGERPRINT_FILE}, so resume=true cannot check that "
                              f"it is the same run; choose another hydra.run.dir")
        return
    try:
        old = json.loads(stored.read_text())["config"]
    except (ValueError, KeyError) as err:
        raise ConfigError(f"{stored} is unreadable ({err}); choose another hydra.run.dir") from None
    diffs = _differences(old, identity(cfg))
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise ConfigError(f"resume=true with a config that differs from the run in {run_dir}: {shown}. A run "
                          f"directory holds one run: resume with its settings or choose another hydra.run.dir")


def write_fingerprint(run_dir: Path, cfg: DictConfig) -> str:
    """Store :func:`identity` and its hash in the run directory (first start); returns the hash."""
    flat = identity(cfg)
    digest = fingerprint(flat)
    path = run_dir / FINGERPRINT_FILE
    if not path.exists():
        path.write_text(json.dumps({"fingerprint": digest, "config": flat}, indent=1, default=str) + "\n")
    return digest


# -- lock -----------------------------------------------------------------------------------------------------------
def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError):
        return "another job"


def check_unlocked(run_dir: Path) -> None:
    """Refuse a run directory that a live job holds (a lock left by a killed job is free: the OS releases it)."""
    path = run_dir / LOCK_FILE
    if not path.exists():
        return
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(f"{run_dir} is in use by {_holder(path)}; wait for it to finish or choose another "
                              f"hydra.run.dir") from None
        fcntl.flock(handle, fcntl.LOCK_UN)


class RunLock:
    """An exclusive ``flock`` on ``<run_dir>/.lock`` for the life of the job (released by the OS if it dies)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._handle = None

    def acquire(self) -> RunLock:
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise ConfigError(f"{self.path.parent} is in use by {_holder(self.path)}; wait for it to finish or "
                              f"choose another hydra.run.dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        self._handle = handle
        return self

    def release(self, remove: bool = True) -> None:
        if self._handle is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Temporary files of atomic writes (``.<name>.*.tmp``) that a killed job left; call with the lock held."""
    stale = [path for path in run_dir.rglob(".*.tmp") if path.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def remove_if_empty(run_dir: Path) -> None:
    """Undo Hydra's ``mkdir`` of a run directory that a refused job never used."""
    try:
        run_dir.rmdir()
    except OSError:
        pass
