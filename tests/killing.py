"""Kill a run.py job at a chosen point and resume it (helpers of the stop-and-resume tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: keys of summary.json / metrics.jsonl that measure time, not results
TIMING_KEYS = ("wall_clock_s", "total_wall_clock_s", "train_wall_clock_s", "eval_wall_clock_s", "search_wall_clock_s")


def command(args: list[str], run_dir: Path) -> list[str]:
    return [sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={run_dir}"]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run(args: list[str], run_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command(args, run_dir), capture_output=True, text=True, timeout=timeout, env=environment(),
                          cwd=ROOT)


def kill_after_lines(args: list[str], run_dir: Path, lines: int, sig: int = signal.SIGKILL,
                     timeout: float = 600) -> int | None:
    """Start the job, send ``sig`` once ``metrics.jsonl`` has ``lines`` lines (``0``: as soon as the run directory
    has its fingerprint); return the exit code (None if it finished before)."""
    proc = subprocess.Popen(command(args, run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=environment(), cwd=ROOT)
    deadline = time.monotonic() + timeout
    metrics, started = run_dir / "metrics.jsonl", run_dir / "fingerprint.json"
    while proc.poll() is None and time.monotonic() < deadline:
        done = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        if started.exists() and done >= lines:
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    proc.wait(timeout=120)
    return proc.returncode


def comparable(run_dir: Path) -> tuple[list[dict], dict]:
    """metrics.jsonl rows and summary.json without timing keys."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    strip = lambda d: {k: v for k, v in d.items() if k not in TIMING_KEYS}  # noqa: E731
    return [strip(row) for row in rows], strip(summary)
