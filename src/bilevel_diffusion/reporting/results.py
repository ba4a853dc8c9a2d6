"""``results/``: Tables 1 and 2 and the figures of both scenarios from every finished run below a folder.

Only reads the run contract (docs/usage.md), so it is re-run on existing run directories without running anything
(``python scripts/aggregate.py RUN_ROOT``). Figures use the smallest seed of each task, one run per method:
``<task>/`` holds Scenario A's over-optimisation curve, sample grids and lambda trace, or Scenario B's comparison
table, schedules, parameter traces and FID over wall clock.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from bilevel_diffusion.reporting import scenario_a
from bilevel_diffusion.reporting.schedule_comparison import write_comparison
from bilevel_diffusion.reporting.tables import TABLE_OF_TASK, Row, write_tables

#: the bilevel methods of Scenario A (Alg. 2 with guided refreshes, and on one pre-trained pool)
SCENARIO_A_BILEVEL = ("closed_form", "closed_form_pool")


def runs_of_first_seed(run_root: Path) -> dict[str, dict[str, Path]]:
    """task -> method -> run directory of the task's smallest seed (finished runs only)."""
    found: dict[str, dict[int, dict[str, Path]]] = defaultdict(lambda: defaultdict(dict))
    for path in sorted(run_root.rglob("summary.json")):
        summary = json.loads(path.read_text())
        found[summary["task"]][int(summary["seed"])][summary["method"]] = path.parent
    return {task: by_seed[min(by_seed)] for task, by_seed in found.items()}


def write_results(run_root: Path, out_dir: Path,
                  paper: Mapping[str, Mapping[str, str]] | None = None) -> tuple[dict[str, list[Row]], list[Path]]:
    """Tables (``out_dir/table{1,2}.{md,tex,csv}``) and figures (``out_dir/<task>/*.png``)."""
    tables = write_tables(run_root, out_dir, paper)
    figures: list[Path] = []
    for task, runs in sorted(runs_of_first_seed(run_root).items()):
        if TABLE_OF_TASK.get(task) == "table1":
            bilevel = next((m for m in SCENARIO_A_BILEVEL if m in runs), "")
            figures += scenario_a.write_figures(runs, out_dir / task, bilevel).values()
        elif task in ("noise_schedule_mnist", "noise_schedule_gmm"):
            written = write_comparison(runs, out_dir / task)
            figures += [path for name, path in written.items() if name != "table"]
    return tables, figures
