"""Scenario B at equal compute: ``python scripts/schedule_comparison.py --size quick [--out DIR] [--report-only]``.

Runs ``task=noise_schedule_mnist experiment=schedule_SIZE`` with every method of ``configs/schedule_comparison.yaml``
(their settings: ``configs/method_preset/schedule_SIZE/noise_schedule_mnist/``), the bilevel method first; its wall
clock becomes each search baseline's ``upper_estimator.timeout_s``. One run directory per method under ``--out``,
then ``comparison.md`` and the figures there. A method whose run directory holds a ``summary.json`` is not run
again; an unfinished one is resumed, so the script can be stopped and started again. Extra ``key=value`` arguments
go to every run (e.g. ``seed=1``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bilevel_diffusion.reporting.schedule_comparison import write_comparison  # noqa: E402


def run_method(run_dir: Path, overrides: list[str]) -> None:
    """One ``run.py`` job into ``run_dir`` (resumed when it holds an unfinished run)."""
    if (run_dir / "summary.json").exists():
        print(f"[{run_dir.name}] done already")
        return
    resume = ["resume=true"] if (run_dir / "config.yaml").exists() else []
    command = [sys.executable, str(ROOT / "run.py"), "task=noise_schedule_mnist", *overrides, *resume,
               f"hydra.run.dir={run_dir}"]
    print(f"[{run_dir.name}] " + " ".join(command[2:]), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("quick", "full"), default="quick")
    parser.add_argument("--out", type=Path, help="folder of the run directories and results "
                                                 "(default outputs/schedule_comparison/SIZE)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the table and figures")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args()
    plan = OmegaConf.load(ROOT / "configs" / "schedule_comparison.yaml")
    out = (args.out or ROOT / "outputs" / "schedule_comparison" / args.size).resolve()
    common = [f"experiment=schedule_{args.size}", *args.overrides]
    methods = [plan.bilevel, *plan.baselines]
    if not args.report_only:
        run_method(out / plan.bilevel, [*common, f"upper_estimator={plan.bilevel}"])
        budget = json.loads((out / plan.bilevel / "summary.json").read_text())["wall_clock_s"]
        for name in plan.baselines:
            timeout = [f"upper_estimator.timeout_s={budget:.0f}"] if name != "fixed" else []
            run_method(out / name, [*common, f"upper_estimator={name}", *timeout])
    runs = {name: out / name for name in methods if (out / name / "summary.json").exists()}
    if not runs:
        sys.exit(f"error: no finished run under {out}")
    written = write_comparison(runs, out)
    print(written["table"].read_text())
    for name, path in written.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
