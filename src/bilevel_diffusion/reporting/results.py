"""``results/``: Tables 1 and 2 and the figures of both scenarios from every finished run below a folder.

Only reads the run contract (docs/usage.md), so it is re-run on existing run directories without running anything
(``python scripts/aggregate.py RUN_ROOT``). Figures use the smallest seed of each task, one run per method:
``<task>/`` holds Scenario A's over-optimisation curve, sample grids and lambda trace, or Scenario B's comparison
table, schedules and parameter traces. Every comparison folder (``RUN_ROOT/<comparison>/<method>/seed_<seed>``)
also gets its derived views over all seeds (:mod:`~bilevel_diffusion.reporting.views`): ``<task>/views.md``,
``views.json`` and ``anytime.png``, gathered per table into ``table1_views.md`` / ``table2_views.md``.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from bilevel_diffusion.reporting import scenario_a
from bilevel_diffusion.reporting.run_files import read_summary
from bilevel_diffusion.reporting.schedule_comparison import write_comparison
from bilevel_diffusion.reporting.tables import TABLE_OF_TASK, Row, write_tables
from bilevel_diffusion.reporting.views import Quality, write_views

#: the bilevel methods of Scenario A (Alg. 2 with guided refreshes, and on one pre-trained pool) and B (Alg. 6)
SCENARIO_A_BILEVEL = ("closed_form", "closed_form_pool")
SCENARIO_B_BILEVEL = ("zeroth_order",)
#: Scenario A's other lambda loop (the guided sampler's own derivative; not the paper's): its chosen lambda's samples
#: are shown beside the bilevel method's
SCENARIO_A_OTHER_LOOPS = ("sampler_difference",)
#: what ``make reproduce`` writes beside a comparison's runs (the bilevel method and the match tolerance)
COMPARISON_FILE = "comparison.json"
#: the quality each table's objective stands for (the objective is minus r1 in Table 1, the FID in Table 2)
QUALITY = {"table1": Quality("$r_1$", -1.0), "table2": Quality("FID", 1.0)}
#: what each table's methods choose, for the figures' titles
CHOSEN = {"table1": r"the KL strength $\lambda$", "table2": "the noise schedule $q$"}


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
            figures += scenario_a.write_figures(runs, out_dir / task, bilevel, SCENARIO_A_OTHER_LOOPS).values()
        elif task in ("noise_schedule_mnist", "noise_schedule_gmm"):
            written = write_comparison(runs, out_dir / task)
            figures += [path for name, path in written.items() if name != "table"]
    figures += write_all_views(run_root, out_dir)
    return tables, figures


def comparison_dirs(run_root: Path) -> list[Path]:
    """Folders below ``run_root`` laid out as ``<comparison>/<method>/seed_<seed>/summary.json``."""
    return sorted({path.parents[2] for path in run_root.rglob("seed_*/summary.json")})


def write_all_views(run_root: Path, out_dir: Path) -> list[Path]:
    """The derived views of every comparison with a bilevel run (``out_dir/<task>/views.md``, ``anytime.png``),
    gathered into ``out_dir/<table>_views.md``; the anytime figures are returned."""
    gathered: dict[str, list[str]] = defaultdict(list)
    figures = []
    for comparison in comparison_dirs(run_root):
        described = (json.loads((comparison / COMPARISON_FILE).read_text())
                     if (comparison / COMPARISON_FILE).exists() else {})
        methods = {path.name for path in comparison.iterdir() if path.is_dir()}
        task = read_summary(next(comparison.glob("*/seed_*/summary.json")).parent)["task"]
        table = TABLE_OF_TASK.get(task)
        bilevel = described.get("bilevel") or next(
            (m for m in (*SCENARIO_A_BILEVEL, *SCENARIO_B_BILEVEL) if m in methods), None)
        if table is None or bilevel not in methods or len(methods) < 2:
            continue
        try:
            written = write_views(comparison, out_dir / task, bilevel, QUALITY[table],
                                  float(described.get("match_tolerance", 0.0)),
                                  title=f"{comparison.name} ({task}): choosing {CHOSEN[table]}")
        except ValueError as err:  # e.g. runs from before report_trials: no anytime curve to draw
            print(f"warning: no derived views for {comparison}: {err}", file=sys.stderr)
            continue
        gathered[table].append(written["views"].read_text())
        figures.append(written["anytime"])
    for table, parts in gathered.items():
        (out_dir / f"{table}_views.md").write_text("\n".join(parts))
    return figures
