"""The derived views (``reporting/views.py``): anytime traces, equal compute and compute-to-match are computed from
the stored trials of finished runs, with the selection/report split respected and unreached seeds kept."""

from __future__ import annotations

import json
import math
import time

import pytest

from bilevel_diffusion.reporting.views import (Quality, bootstrap_median, comparison_traces, compute_to_match,
                                               equal_compute, paper_table, run_trace, write_views)

FID = Quality("FID", 1.0)


def _finished(root, method: str, seed: int, trials: list[tuple[float, float, float, float]] = (), **summary) -> None:
    """A finished run; ``trials``: (selection objective, reported objective, search_s, search_cost) per trial."""
    run_dir = root / method / f"seed_{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"method": method, "seed": seed, **summary}))
    rows = [{"step": i, "trial": i, "objective": sel, "report_objective": rep, "search_s": s, "search_cost": c}
            for i, (sel, rep, s, c) in enumerate(trials)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


# selection says trial 1 (20) beats trial 0 (30); on the evaluation noise trial 1 is worse (34 vs 31): the answer
# after trial 1 is trial 1, reported 34. Trial 2 is selected best and reported 25.
SEARCH = [(30.0, 31.0, 10.0, 100), (20.0, 34.0, 40.0, 200), (10.0, 25.0, 90.0, 300), (15.0, 5.0, 120.0, 400)]


def test_the_answer_follows_selection_and_its_quality_is_the_reported_value(tmp_path) -> None:
    _finished(tmp_path, "bayesian", 0, SEARCH, objective=25.0, wall_clock_s=130.0)
    trace = run_trace(tmp_path / "bayesian" / "seed_0")
    # trial 3's reported 5.0 is never the answer: its selection value (15) does not beat trial 2's (10)
    assert trace.objective == [31.0, 34.0, 25.0, 25.0] and trace.searched
    assert trace.compute == {"wall_clock_s": [10.0, 40.0, 90.0, 120.0], "sampler_cost": [100, 200, 300, 400]}
    assert trace.at("wall_clock_s", 39.0) == 31.0 and trace.at("wall_clock_s", 5.0) == math.inf
    _finished(tmp_path, "zeroth_order", 0, objective=28.0, wall_clock_s=50.0, sampler_cost=10_500, report_nfe=500)
    point = run_trace(tmp_path / "zeroth_order" / "seed_0")
    assert point.compute == {"wall_clock_s": [50.0], "sampler_cost": [10_000.0]} and not point.searched


def test_only_the_answers_need_a_measurement(tmp_path) -> None:
    """Searches measure only the trials that became the answer so far: a trace reads those; an answer without its
    measurement is an error, never a silently wrong curve."""
    _finished(tmp_path, "random", 0, SEARCH, objective=25.0, wall_clock_s=130.0)
    path = tmp_path / "random" / "seed_0" / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    del rows[3]["report_objective"]  # trial 3 never became the answer
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_trace(path.parent).objective == [31.0, 34.0, 25.0, 25.0]
    del rows[2]["report_objective"]  # trial 2 did
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="trial 2 became the search's answer"):
        run_trace(path.parent)


def test_equal_compute_and_compute_to_match_per_seed_with_unreached_seeds_kept(tmp_path) -> None:
    for seed in (0, 1):
        _finished(tmp_path, "bayesian", seed, SEARCH, objective=25.0, wall_clock_s=130.0)
    _finished(tmp_path, "zeroth_order", 0, objective=24.0, wall_clock_s=9.0, sampler_cost=50)  # beats 25
    _finished(tmp_path, "zeroth_order", 1, objective=33.0, wall_clock_s=60.0, sampler_cost=50)  # only beats 34
    traces = comparison_traces(tmp_path)
    rows = {row["method"]: row for row in equal_compute(traces, "zeroth_order", FID)}
    # seed 0: within 9 s no trial has finished; seed 1: within 60 s the answer is trial 1 (reported 34)
    assert rows["bayesian"]["wall_clock_s"] == "34 (1 of 2 seeds: none)"
    match = compute_to_match(traces, "zeroth_order", "bayesian", "wall_clock_s")
    assert match.search_to_bilevel == {0: None, 1: 10.0}  # seed 1: trial 0's reported 31 <= 33
    assert match.bilevel_to_search == {0: 9.0, 1: None}
    assert match.search_to_own_best == {0: 90.0, 1: 90.0}
    assert match.ratios == {0: pytest.approx(0.1), 1: math.inf}
    loose = compute_to_match(traces, "zeroth_order", "bayesian", "wall_clock_s", tolerance=8.0)
    assert loose.bilevel_to_search == {0: 9.0, 1: 60.0}
    table = {row["method"]: row for row in paper_table(traces, FID)}
    assert table["zeroth_order"]["quality"].startswith("28.5 ± ") and table["bayesian"]["wall_clock_s"] == "120 ± 0"


def test_views_are_read_from_the_stored_trials(tmp_path) -> None:
    runs = tmp_path / "runs"
    for seed in (0, 1, 2):
        _finished(runs, "bayesian", seed, SEARCH, objective=25.0, wall_clock_s=130.0)
        _finished(runs, "zeroth_order", seed, objective=24.0, wall_clock_s=9.0 * (seed + 1), sampler_cost=50)
    written = write_views(runs, tmp_path / "out", "zeroth_order", FID)
    ratios = json.loads(written["views_json"].read_text())["matches"][0]["ratios"]
    assert ratios == {"0": pytest.approx(0.1), "1": pytest.approx(0.2), "2": pytest.approx(0.3)}
    assert written["anytime"].stat().st_size > 10_000 and "(c) Compute-to-match" in written["views"].read_text()
    # change one stored trial: the views follow the files (nothing is re-run or cached)
    path = runs / "bayesian" / "seed_0" / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[2]["search_s"] = 45.0
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = write_views(runs, tmp_path / "out", "zeroth_order", FID)
    assert json.loads(written["views_json"].read_text())["matches"][0]["ratios"]["0"] == pytest.approx(0.2)


def test_bootstrap_median_keeps_unreached_seeds() -> None:
    median, low, high = bootstrap_median([0.1, 0.2, math.inf])
    assert median == 0.2 and low == 0.1 and high == math.inf
    assert bootstrap_median([0.5] * 4) == (0.5, 0.5, 0.5)


def test_a_search_without_measured_trials_is_refused_with_the_fix(tmp_path) -> None:
    run_dir = tmp_path / "random" / "seed_0"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"method": "random", "seed": 0, "objective": 1.0}))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 0, "trial": 0, "objective": 1.0}) + "\n")
    with pytest.raises(ValueError, match="report_trials=true"):
        run_trace(run_dir)


def test_make_bench_reads_compute_to_match_from_the_runs(tmp_path) -> None:
    import sys

    from conftest import ROOT
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench

    comparison = tmp_path / "quick" / "scenario_b_testbed"
    for seed in (0, 1, 2):
        _finished(comparison, "bayesian", seed, SEARCH, objective=25.0, wall_clock_s=130.0)
        _finished(comparison, "zeroth_order", seed, objective=24.0 if seed else 26.0, wall_clock_s=9.0)
    row = bench.bench_scenario_b_time(tmp_path / "quick")
    assert row["per_seed"] == {"0": None, "1": pytest.approx(0.1), "2": pytest.approx(0.1)}
    assert row["ratio"] == pytest.approx(0.1) and row["met"] and "reached in 2/3 seeds" in row["setting"]
    _finished(comparison.parent / "finetune_mnist", "closed_form", 0, objective=30.0, sampler_cost=10,
              wall_clock_s=5.0)
    _finished(comparison.parent / "finetune_mnist", "bayesian", 0, SEARCH, objective=25.0, wall_clock_s=1.0)
    never = bench.bench_scenario_a_cost(tmp_path / "quick")
    assert never["ratio"] is None and not never["met"]
    assert "| inf (not reached) | <= 0.25 | no |" in bench.to_markdown([never], bench.machine())
    missing = bench.bench_scenario_b_mnist_time(tmp_path / "medium")  # MODE=medium not run: said, not zero
    assert missing["ratio"] is None and "not measured" in missing["setting"]
    assert "| not measured | <= 0.2 | – |" in bench.to_markdown([missing], bench.machine())
    medium = tmp_path / "medium" / "scenario_b_mnist"
    _finished(medium, "bayesian", 0, SEARCH, objective=25.0, wall_clock_s=130.0)
    _finished(medium, "zeroth_order", 0, objective=24.0, wall_clock_s=9.0)
    assert bench.bench_scenario_b_mnist_time(tmp_path / "medium")["per_seed"] == {"0": pytest.approx(0.1)}


def test_make_bench_only_remeasures_the_named_rows_and_keeps_the_others(tmp_path, monkeypatch, capsys) -> None:
    import sys

    from conftest import ROOT
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench

    out = tmp_path / "bench"
    out.mkdir()
    kept = {"name": "guided / plain sampling step", "ratio": 2.3, "target": "<= 2.5", "met": True, "setting": "s",
            "measured": "2026-12-01"}
    old_mnist = {"name": bench.bench_scenario_b_mnist_time(tmp_path / "none")["name"], "ratio": None, "target": "x",
                 "met": False, "setting": "not measured"}
    (out / "bench.json").write_text(json.dumps({"machine": {}, "results": [kept, old_mnist]}))
    medium = tmp_path / "medium" / "scenario_b_mnist"
    _finished(medium, "bayesian", 0, SEARCH, objective=25.0, wall_clock_s=130.0)
    _finished(medium, "zeroth_order", 0, objective=24.0, wall_clock_s=9.0)
    monkeypatch.setattr(sys, "argv", ["bench.py", "--out", str(out), "--medium-runs", str(tmp_path / "medium"),
                                      "--only", "scenario_b_mnist_time"])
    bench.main()
    rows = json.loads((out / "bench.json").read_text())["results"]
    assert rows[0] == kept and len(rows) == 2  # untouched, in its place; the named row replaced, not appended
    assert rows[1]["per_seed"] == {"0": pytest.approx(0.1)} and rows[1]["measured"] == time.strftime("%Y-%m-%d")
    assert "| 2026-12-01 |" in (out / "bench.md").read_text()
    monkeypatch.setattr(sys, "argv", ["bench.py", "--out", str(out), "--only", "guided"])
    with pytest.raises(SystemExit, match="error: --only \\['guided'\\]"):
        bench.main()
    monkeypatch.setattr(sys, "argv", ["bench.py", "--out", str(tmp_path / "empty"), "--only", "scenario_a_cost"])
    with pytest.raises(SystemExit, match="does not exist"):
        bench.main()


def test_make_bench_reads_the_committed_records_where_no_runs_are_left(tmp_path, monkeypatch) -> None:
    import sys

    from conftest import ROOT
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench

    monkeypatch.setattr(bench, "ROOT", tmp_path)
    assert bench.default_runs("medium") == tmp_path / "results" / "medium" / "runs"  # no outputs/ in a fresh clone
    medium = tmp_path / "results" / "medium" / "runs" / "scenario_b_mnist"
    _finished(medium, "bayesian", 0, SEARCH, objective=25.0, wall_clock_s=130.0)
    _finished(medium, "zeroth_order", 0, objective=24.0, wall_clock_s=9.0)
    row = bench.bench_scenario_b_mnist_time(bench.default_runs("medium"))
    assert row["per_seed"] == {"0": pytest.approx(0.1)} and row["setting"].startswith("medium runs of scenario_b_mnist")
    runs = tmp_path / "outputs" / "reproduce" / "medium"
    _finished(runs / "scenario_b_mnist", "fixed", 0, objective=30.0, wall_clock_s=1.0)
    assert bench.default_runs("medium") == runs  # runs of its own come first
