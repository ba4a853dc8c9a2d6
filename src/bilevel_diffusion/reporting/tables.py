"""Tables 1 and 2 of the paper from run directories: every ``summary.json`` under a folder, grouped by
(task, method), mean ± std over seeds, written as Markdown, LaTeX and CSV.

Aggregation only reads finished runs, so it can be re-run on existing run directories at any time.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: (column title, summary.json key) of each table
TABLE_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "table1": [("FID vs pre-trained", "fid_vs_pretrained"), ("KID vs pre-trained", "kid_vs_pretrained"),
               ("n per set (FID, KID)", "distance_num_samples"), ("r1 / CLIP score", "r1"), ("reward r2", "r2"),
               ("lambda", "lambda"), ("wall-clock (s)", "wall_clock_s"),
               ("of which trial measurements (s)", "measurement_s"), ("sampler NFEs", "sampler_nfe"),
               ("sampler cost (forward passes)", "sampler_cost")],
    "table2": [("FID", "fid"), ("KID", "kid"), ("n generated (FID, KID)", "eval_num_samples"), ("IS", "is"),
               ("wall-clock (s)", "wall_clock_s"), ("of which trial measurements (s)", "measurement_s"),
               ("trainings used", "trainings_used"), ("sampler NFEs", "sampler_nfe")],
}
#: columns that count things (printed without decimals)
COUNT_KEYS = {"sampler_nfe", "sampler_cost", "trainings_used", "distance_num_samples", "eval_num_samples"}
PAPER_NOTE = ("Mean ± std over seeds. Trial measurements: the time a search spent measuring each trial on the "
              "evaluation noise for the anytime curves (`report_trials`), not part of its own compute. `paper`: the "
              "paper's reported number from configs/paper_numbers.yaml; empty where it is not known to this project "
              "(none is, so far).")
#: which table a task's runs go to
TABLE_OF_TASK = {"finetune_gaussian": "table1", "finetune_mnist": "table1", "finetune_aesthetic": "table1",
                 "finetune_synthetic": "table1", "finetune_hps": "table1",
                 "train_mnist": "table2", "noise_schedule_mnist": "table2", "train_gmm": "table2",
                 "noise_schedule_gmm": "table2"}


@dataclass
class Row:
    task: str
    method: str
    seeds: list[int]
    cells: dict[str, tuple[float, float] | None]  # key -> (mean, std) over seeds, None when no run reports it
    paper: str = ""


def load_summaries(root: str | Path) -> list[dict]:
    """Every ``summary.json`` below ``root`` (one per finished job), with ``measurement_s``: the seconds its search
    trials spent on their evaluation-noise measurements (``report_s`` of its ``metrics.jsonl``; searches only)."""
    summaries = []
    for path in sorted(Path(root).rglob("summary.json")):
        summary = json.loads(path.read_text())
        metrics = path.with_name("metrics.jsonl")
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line] if metrics.exists() else []
        measured = [row["report_s"] for row in rows if "trial" in row and "report_s" in row]
        if measured:
            summary["measurement_s"] = float(sum(measured))
        summaries.append(summary)
    return summaries


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def build_rows(summaries: Iterable[Mapping], table: str, paper: Mapping[str, Mapping[str, str]] | None = None) -> list[Row]:
    """Group the summaries of ``table``'s tasks by (task, method); mean ± std of every column over seeds."""
    groups: dict[tuple[str, str], list[Mapping]] = defaultdict(list)
    for summary in summaries:
        if TABLE_OF_TASK.get(summary.get("task")) == table:
            groups[(summary["task"], summary["method"])].append(summary)
    rows = []
    for (task, method), runs in sorted(groups.items()):
        cells = {}
        for _, key in TABLE_COLUMNS[table]:
            values = [float(run[key]) for run in runs if isinstance(run.get(key), (int, float))]
            cells[key] = _mean_std(values) if values else None
        rows.append(Row(task, method, sorted(int(run["seed"]) for run in runs), cells,
                        (paper or {}).get(task, {}).get(method) or ""))
    return rows


def _cell(value: tuple[float, float] | None, plus_minus: str = " ± ", count: bool = False) -> str:
    if value is None:
        return "–"
    mean, std = value
    digits = 0 if count or abs(mean) >= 1000 else (2 if abs(mean) >= 1 else 4)
    text = f"{mean:.{digits}f}" if math.isfinite(mean) else str(mean)
    return text + (f"{plus_minus}{std:.{digits}f}" if std else "")


def _header(table: str) -> list[str]:
    return ["task", "method", "seeds", *[title for title, _ in TABLE_COLUMNS[table]], "paper"]


def _cells(row: Row, table: str, plus_minus: str = " ± ") -> list[str]:
    return [row.task, row.method, str(len(row.seeds)),
            *[_cell(row.cells[key], plus_minus, key in COUNT_KEYS) for _, key in TABLE_COLUMNS[table]], row.paper]


def to_markdown(rows: Sequence[Row], table: str) -> str:
    lines = ["| " + " | ".join(_header(table)) + " |", "|" + "---|" * len(_header(table))]
    lines += ["| " + " | ".join(_cells(row, table)) + " |" for row in rows]
    lines += ["", PAPER_NOTE]
    return "\n".join(lines) + "\n"


def to_latex(rows: Sequence[Row], table: str) -> str:
    escape = lambda text: text.replace("_", r"\_").replace("%", r"\%")  # noqa: E731
    lines = [r"\begin{tabular}{" + "l" * 3 + "r" * len(TABLE_COLUMNS[table]) + "l}", r"\toprule",
             " & ".join(escape(h) for h in _header(table)) + r" \\", r"\midrule"]
    lines += [" & ".join(escape(c) for c in _cells(row, table, r" $\pm$ ")) + r" \\" for row in rows]
    return "\n".join([*lines, r"\bottomrule", r"\end{tabular}"]) + "\n"


def write_csv(rows: Sequence[Row], table: str, path: Path) -> None:
    """One column per mean and per std, numbers unformatted."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        keys = [key for _, key in TABLE_COLUMNS[table]]
        writer.writerow(["task", "method", "seeds", *[f"{k}_{s}" for k in keys for s in ("mean", "std")], "paper"])
        for row in rows:
            numbers = [x for k in keys for x in (row.cells[k] if row.cells[k] else ("", ""))]
            writer.writerow([row.task, row.method, len(row.seeds), *numbers, row.paper])


def write_tables(run_root: str | Path, out_dir: str | Path,
                 paper: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, list[Row]]:
    """``out_dir/table{1,2}.{md,tex,csv}`` from every run below ``run_root``; a table no run belongs to is not
    written (``make reproduce MODE=medium`` has no Scenario A run)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = load_summaries(run_root)
    tables = {}
    for table in TABLE_COLUMNS:
        rows = build_rows(summaries, table, paper)
        if not rows:
            continue
        (out / f"{table}.md").write_text(to_markdown(rows, table))
        (out / f"{table}.tex").write_text(to_latex(rows, table))
        write_csv(rows, table, out / f"{table}.csv")
        tables[table] = rows
    return tables
