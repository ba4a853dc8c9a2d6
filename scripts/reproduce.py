"""Reproduce the paper's tables and figures: ``python scripts/reproduce.py --mode smoke|quick|medium|full`` (``make reproduce``).

Prints the plan of ``configs/reproduce_MODE.yaml`` and its time estimate, runs every comparison as Hydra multiruns
into ``--runs`` (resumable: run it again after a stop), then aggregates every finished run into ``--results``
(``scripts/aggregate.py`` does only that step) and copies the runs' records (no weights) to ``RESULTS/runs/``.
``--from-records`` first copies those records into ``--runs`` (a fresh checkout goes on where the committed records
stopped); ``--save-records`` only copies them out (before a working session ends). Extra ``key=value`` arguments go
to every job.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

from aggregate import aggregate  # noqa: E402

from bilevel_diffusion.errors import ConfigError  # noqa: E402
from bilevel_diffusion.reporting.run_records import export_records, restore_records  # noqa: E402
from bilevel_diffusion.reproduce import describe, load_plan, results_dir, run_plan  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="quick", help="plan configs/reproduce_MODE.yaml: smoke, quick, medium or full")
    parser.add_argument("--runs", type=Path, help="run directories (default outputs/reproduce/MODE)")
    parser.add_argument("--results", type=Path, help="tables and figures (default results/ for quick, else results/MODE/)")
    parser.add_argument("--only", type=lambda text: text.split(","), metavar="A,B",
                        help="run only these comparisons of the plan (comma-separated)")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], metavar="0,1",
                        help="replace the plan's seeds")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="run N multiruns at once, each on CPUs/N threads, output to RUNS/logs/ (default 1)")
    parser.add_argument("--from-records", action="store_true",
                        help="first copy RESULTS/runs/ (committed records) into --runs, keeping newer files there")
    parser.add_argument("--save-records", action="store_true",
                        help="only copy the records of --runs to RESULTS/runs/ (no weights) and exit")
    parser.add_argument("--plan-only", action="store_true", help="print the plan and the estimate, run nothing")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every job")
    args = parser.parse_args()
    try:
        plan = load_plan(args.mode)
    except ConfigError as err:
        sys.exit(f"error: {err}")
    if args.only:
        unknown = set(args.only) - {c.name for c in plan.comparisons}
        if unknown:
            sys.exit(f"error: --only {sorted(unknown)} not in the plan {[c.name for c in plan.comparisons]}")
        plan.comparisons = [c for c in plan.comparisons if c.name in args.only]
    if args.seeds:  # replaces every comparison's seeds
        plan.seeds = args.seeds
        for comparison in plan.comparisons:
            comparison.seeds = None
    runs = (args.runs or ROOT / "outputs" / "reproduce" / args.mode).resolve()
    results = (args.results or results_dir(args.mode)).resolve()
    if args.jobs < 1:
        sys.exit(f"error: --jobs must be >= 1 (got {args.jobs})")
    records = results / "runs"
    if args.save_records:
        if not runs.is_dir():
            sys.exit(f"error: --save-records: {runs} holds no runs")
        print(f"records: {len(export_records(runs, records))} files -> {records}")
        return
    if args.from_records:
        if not records.is_dir():
            sys.exit(f"error: --from-records: {records} holds no records (make reproduce MODE={args.mode} writes them)")
        print(f"records: {len(restore_records(records, runs))} files from {records} -> {runs}")
    print(describe(plan, runs, args.jobs), flush=True)
    if args.plan_only:
        return
    start = time.monotonic()
    try:
        run_plan(plan, runs, args.overrides, args.jobs)
    except KeyboardInterrupt:  # Ctrl-C between two jobs (inside one, the job stops itself at a safe point: exit 130)
        print("stopped by SIGINT; rerun the same command to continue (finished jobs are kept)", file=sys.stderr)
        sys.exit(130)
    print(f"all jobs finished in {(time.monotonic() - start) / 60:.1f} min", flush=True)
    aggregate(runs, results)
    print(f"records: {len(export_records(runs, records))} files -> {records}")


if __name__ == "__main__":
    main()
