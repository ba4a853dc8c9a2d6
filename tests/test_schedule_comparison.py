"""The Scenario B comparison table and figures, from run directories of the run contract."""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from bilevel_diffusion.reporting.schedule_comparison import write_comparison
from conftest import compose

INITIAL = {"start": 0.0, "end": 1.0, "tau": 1.0, "eps": 0.008}


def _run(root, method: str, fid: float, schedule: dict, rows: list[dict], **extra) -> None:
    run_dir = root / method
    run_dir.mkdir()
    OmegaConf.save(compose("task=noise_schedule_mnist"), run_dir / "config.yaml", resolve=True)
    summary = {"task": "noise_schedule_mnist", "method": method, "seed": 0, "objective": fid, "fid": fid, "is": 5.0,
               "wall_clock_s": rows[-1]["wall_clock_s"], "sampler_nfe": 1000, "eval_num_samples": 500,
               "fid_features": "mnist_classifier", "initial_schedule": INITIAL,
               "schedule": {"name": "learned_cosine", **schedule}, **extra}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _logged(schedule: dict) -> dict:
    return {f"schedule_{k}": v for k, v in schedule.items()}


def test_table_and_figures_from_run_directories(tmp_path) -> None:
    learned = {"start": 0.1, "end": 0.95, "tau": 1.5, "eps": 0.01}
    _run(tmp_path, "zeroth_order", 20.0, learned, trainings_used=1,
         rows=[{"step": 10, "wall_clock_s": 5.0, "objective_fid": 90.0, **_logged(INITIAL)},
               {"step": 20, "wall_clock_s": 9.0, "objective_fid": 80.0, **_logged(learned)}])
    _run(tmp_path, "random", 25.0, {**INITIAL, "tau": 3.0}, trainings_used=2,
         rows=[{"step": 0, "wall_clock_s": 6.0, "trial": 0, "fid": 30.0},
               {"step": 1, "wall_clock_s": 12.0, "trial": 1, "fid": 25.0},
               {"step": 2, "wall_clock_s": 12.1, "fid": 25.0}])
    written = write_comparison({"zeroth_order": tmp_path / "zeroth_order", "random": tmp_path / "random"}, tmp_path)
    table = written["table"].read_text()
    assert "| zeroth_order | 20.00 | 5.00 | 9.00 | 1 | 1,000 | learned_cosine (0.100, 0.950, 1.500, 0.010) |" in table
    assert "| random | 25.00 |" in table and "500 DDIM samples" in table
    for name in ("schedules", "schedule_params"):
        assert written[name].stat().st_size > 10_000, name
