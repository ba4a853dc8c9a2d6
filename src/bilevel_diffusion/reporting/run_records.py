"""The records of a reproduce: run directories without their weights, kept beside the tables (``RESULTS/runs/``).

``make reproduce`` copies them there after its aggregate step, so that the committed tables, figures and derived
views can be rebuilt from what they were computed from (``make aggregate RUNS=results/medium/runs OUT=...``), and so
that a reproduce longer than one working session can go on in a fresh checkout (``--from-records``): a finished
job is not run again (its ``summary.json`` is there), and a search restarts from its optuna study (``study.db``, the
finished trials; ``upper_estimators/search.py``). What is left out: checkpoints, exported pipelines, lock files and
any file over ``max_bytes``; a run that is neither finished nor a search (nothing to continue from without its
checkpoint) is left out whole. ``docs/results.md`` (Records).
"""

from __future__ import annotations

import shutil
from pathlib import Path

#: folders and files never kept: weights (large, and not needed by the tables) and a running job's lock
SKIPPED_NAMES = ("checkpoints", "diffusers", ".lock")


def _resumable(run_dir: Path) -> bool:
    return (run_dir / "summary.json").exists() or (run_dir / "study.db").exists()


def _kept(path: Path, root: Path, max_bytes: int) -> bool:
    relative = path.relative_to(root)
    if any(part in SKIPPED_NAMES for part in relative.parts) or path.stat().st_size > max_bytes:
        return False
    run_dirs = [parent for parent in path.parents if parent != root and root in parent.parents
                and parent.name != ".hydra" and (parent / "config.yaml").exists()]
    return all(_resumable(run_dir) for run_dir in run_dirs)


def export_records(runs_dir: Path, out: Path, max_bytes: int = 2_000_000) -> list[Path]:
    """Copy the records of every run below ``runs_dir`` to ``out`` (same layout), replacing older copies; returns
    the files written. ``out`` inside ``runs_dir`` or the other way round is refused (it would copy itself)."""
    runs_dir, out = runs_dir.resolve(), out.resolve()
    if out == runs_dir or runs_dir in out.parents or out in runs_dir.parents:
        raise ValueError(f"records of {runs_dir} cannot go to {out}: one holds the other")
    written = []
    for path in sorted(runs_dir.rglob("*")):
        if path.is_file() and not path.is_symlink() and _kept(path, runs_dir, max_bytes):
            target = out / path.relative_to(runs_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            written.append(target)
    return written


def restore_records(records: Path, runs_dir: Path) -> list[Path]:
    """Copy ``records`` (written by :func:`export_records`) into ``runs_dir`` without replacing any file there:
    what already exists in ``runs_dir`` is newer or the same. Returns the files written."""
    written = []
    for path in sorted(records.rglob("*")):
        target = runs_dir / path.relative_to(records)
        if path.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            written.append(target)
    return written
