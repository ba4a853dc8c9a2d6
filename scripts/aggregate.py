"""Aggregate finished runs into the paper's tables: ``python scripts/aggregate.py RUN_ROOT [--out results]``.

Reads every ``summary.json`` below RUN_ROOT (re-runnable on existing run directories, runs nothing) and writes
``table1.{md,tex,csv}`` (Scenario A) and ``table2.{md,tex,csv}`` (Scenario B), mean ± std over seeds, with the
paper's reported numbers from ``configs/paper_numbers.yaml`` in their own column (empty where unknown).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bilevel_diffusion.reporting.tables import write_tables  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_root", type=Path, help="folder holding run directories (searched recursively)")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="where the tables go")
    args = parser.parse_args()
    if not args.run_root.is_dir():
        sys.exit(f"error: {args.run_root} is not a folder of runs")
    paper = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "paper_numbers.yaml"))
    tables = write_tables(args.run_root, args.out, {**paper.get("table1", {}), **paper.get("table2", {})})
    for name, rows in tables.items():
        print(f"{name}: {len(rows)} rows -> {args.out / name}.md/.tex/.csv")


if __name__ == "__main__":
    main()
