"""Aggregate finished runs into the paper's tables and figures: ``python scripts/aggregate.py RUN_ROOT [--out DIR]``.

Reads every ``summary.json`` below RUN_ROOT (re-runnable on existing run directories, runs nothing) and writes
``table1.{md,tex,csv}`` (Scenario A) and ``table2.{md,tex,csv}`` (Scenario B), mean ± std over seeds, with the
paper's reported numbers from ``configs/paper_numbers.yaml`` in their own column (empty where unknown), and the
figures of both scenarios under ``DIR/<task>/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def aggregate(run_root: Path, out: Path) -> None:
    """Write and list the tables and figures of every finished run below ``run_root``."""
    if not run_root.is_dir():
        sys.exit(f"error: {run_root} is not a folder of runs")
    from bilevel_diffusion.reporting.results import write_results  # heavy (torch, matplotlib): after the check

    paper = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "paper_numbers.yaml"))
    tables, figures = write_results(run_root, out, {**paper.get("table1", {}), **paper.get("table2", {})})
    for name, rows in tables.items():
        print(f"{name}: {len(rows)} rows -> {out / name}.md/.tex/.csv")
    for path in figures:
        print(f"figure: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_root", type=Path, help="folder holding run directories (searched recursively)")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="where the tables and figures go")
    args = parser.parse_args()
    aggregate(args.run_root, args.out)


if __name__ == "__main__":
    main()
