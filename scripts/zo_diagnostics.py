"""The loop diagnostics of Alg. 6 runs (``upper_estimator=zeroth_order``): per run, the medians over its bilevel steps
of ``term_ratio_q`` (|ZO_q F / gamma| over the penalty part of the q-gradient), ``q_grad_snr``, the theta_z
F-gradient over gamma against theta_z's score-matching gradient, the in-loop FID of theta_z at the start and end,
and the schedule it ended with (``docs/method.md``).

    python scripts/zo_diagnostics.py RUN_DIR [RUN_DIR ...] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bilevel_diffusion.reporting.run_files import read_metrics, read_summary  # noqa: E402


def _median(rows: list[dict], key: str) -> float:
    values = [row[key] for row in rows if isinstance(row.get(key), (int, float))]
    return statistics.median(values) if values else float("nan")


def diagnostics(run_dir: Path) -> dict:
    rows = [row for row in read_metrics(run_dir) if "gamma" in row]
    if not rows:
        raise SystemExit(f"error: {run_dir} has no bilevel steps in metrics.jsonl (not a zeroth_order run?)")
    summary = read_summary(run_dir)
    f_over_gamma = [row["gnorm_f_z"] / row["gamma"] / row["gnorm_sm_z"] for row in rows
                    if row.get("gnorm_sm_z") and "gnorm_f_z" in row]
    return {"run": str(run_dir), "seed": summary["seed"], "bilevel_steps": len(rows), "gamma": rows[0]["gamma"],
            "term_ratio_q": _median(rows, "term_ratio_q"), "q_grad_snr": _median(rows, "q_grad_snr"),
            "theta_z_f_over_sm": statistics.median(f_over_gamma) if f_over_gamma else float("nan"),
            "objective_fid_first": rows[0]["objective_fid"], "objective_fid_last": rows[-1]["objective_fid"],
            "fid": summary["fid"], "schedule": {k: v for k, v in summary["schedule"].items() if k != "name"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    found = [diagnostics(run) for run in args.runs]
    lines = ["| seed | bilevel steps | gamma | median term_ratio_q | median q_grad_snr | median abs(grad_z F)/gamma / "
             "abs(grad_z L) | in-loop FID of theta_z, first -> last step | reported FID | final (start, end, tau, "
             "eps) |", "|---|---|---|---|---|---|---|---|---|"]
    for d in found:
        schedule = ", ".join(f"{d['schedule'][k]:.3f}" for k in ("start", "end", "tau", "eps") if k in d["schedule"])
        lines.append(f"| {d['seed']} | {d['bilevel_steps']} | {d['gamma']:g} | {d['term_ratio_q']:.3g} | "
                     f"{d['q_grad_snr']:.3g} | {d['theta_z_f_over_sm']:.3g} | {d['objective_fid_first']:.1f} -> "
                     f"{d['objective_fid_last']:.1f} | {d['fid']:.1f} | ({schedule}) |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        (args.out.with_suffix(".json")).write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
