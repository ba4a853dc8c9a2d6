"""Reading a finished run directory of the run contract (docs/usage.md): its ``summary.json`` and ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_summary(run_dir: Path) -> dict[str, Any]:
    """The run's ``summary.json``."""
    return json.loads((run_dir / "summary.json").read_text())


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The run's ``metrics.jsonl``, one dict per logged line."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
