"""``make reproduce``: the plans compose, every method runs at its own budget, and MODE=smoke runs every comparison
through Hydra multirun and produces every table, figure and derived view (the CI run of issue 6)."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from hydra.utils import instantiate

from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.reproduce import Comparison, describe, load_plan, plan_commands, results_dir, run_plan
from conftest import ROOT, assert_run_contract, compose, read_jsonl, run_in_process

MODES = ("smoke", "quick", "medium", "full")


def _reproduce(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "reproduce.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


@pytest.mark.parametrize("mode", MODES)
def test_every_job_of_every_plan_composes(mode) -> None:
    plan = load_plan(mode)
    assert plan.seeds and plan.num_jobs == sum(len(plan.seeds_of(c)) * len(c.methods) for c in plan.comparisons)
    for c in plan.comparisons:
        for method in c.methods:
            experiment = [f"experiment={c.experiment}"] if c.experiment else []
            cfg = compose(f"task={c.task}", *experiment, f"upper_estimator={method}", *c.overrides,
                          *c.method_overrides.get(method, []))
            assert method.startswith(cfg.upper_estimator.name) and cfg.task.name == c.task
            instantiate(cfg.upper_estimator)  # the method's overrides are settings it has


@pytest.mark.parametrize("mode", MODES)
def test_no_search_budget_depends_on_another_methods_run(mode, tmp_path) -> None:
    """Every multirun of every plan is fixed by the plan alone: the same commands whether or not other methods'
    runs exist (with any wall clock), none sets a budget from a run, and they all run even when run in any order."""
    plan = load_plan(mode)
    before = plan_commands(plan, tmp_path)
    for c in plan.comparisons:  # finished bilevel runs with some wall clock
        for seed in plan.seeds_of(c):
            run_dir = tmp_path / c.name / c.bilevel / f"seed_{seed}"
            run_dir.mkdir(parents=True)
            (run_dir / "summary.json").write_text(json.dumps({"wall_clock_s": 1234.0 + seed}))
    assert plan_commands(plan, tmp_path) == before
    assert not any("timeout_s" in arg for command in before.values() for arg in command)
    ran: list[str] = []
    run_plan(plan, tmp_path / "other", jobs=3, runner=lambda label, command: ran.append(label))
    assert sorted(ran) == sorted(plan_commands(plan, tmp_path / "other", jobs=3))
    described = json.loads((tmp_path / "other" / plan.comparisons[0].name / "comparison.json").read_text())
    assert described["bilevel"] == plan.comparisons[0].bilevel


def test_searches_run_the_papers_trial_counts_in_quick_and_full() -> None:
    for mode, task, trials in (("quick", "noise_schedule_gmm", 15), ("full", "noise_schedule_mnist", 15),
                               ("quick", "finetune_mnist", 20), ("full", "finetune_synthetic", 20)):
        c = next(c for c in load_plan(mode).comparisons if c.task == task)
        for method in ("random", "bayesian"):
            cfg = compose(f"task={task}", *([f"experiment={c.experiment}"] if c.experiment else []),
                          f"upper_estimator={method}", *c.overrides, *c.method_overrides.get(method, []))
            assert cfg.upper_estimator.n_trials == trials and cfg.upper_estimator.timeout_s is None, (mode, method)
            assert cfg.upper_estimator.report_trials


def test_medium_trains_mnist_long_enough_and_writes_beside_quick() -> None:
    """MODE=medium: Scenario B on MNIST with 4,000-step bf16 trainings (the length at which the schedule changed
    the FID by more than the seed spread), 5 trainings per search, and tables under results/medium/ (quick's stay)."""
    (c,) = load_plan("medium").comparisons
    assert (c.task, c.bilevel, c.baselines) == ("noise_schedule_mnist", "zeroth_order", ["fixed", "random", "bayesian"])
    for method in c.methods:
        cfg = compose(f"task={c.task}", f"experiment={c.experiment}", f"upper_estimator={method}",
                      *c.method_overrides.get(method, []))
        assert cfg.lower_solver.num_steps == 4000 and cfg.lower_solver.mixed_precision == "bf16"
        assert cfg.eval.num_samples == 1000 and cfg.data._target_.endswith("load_mnist5k")
        if method in ("random", "bayesian"):
            assert cfg.upper_estimator.n_trials == 5 and cfg.upper_estimator.report_trials
    assert results_dir("quick", ROOT) == ROOT / "results"
    assert {results_dir(m, ROOT).relative_to(ROOT).as_posix() for m in ("smoke", "medium", "full")} == {
        "results/smoke", "results/medium", "results/full"}


def test_a_comparison_may_run_its_own_seeds_and_the_command_line_replaces_them() -> None:
    plan = load_plan("quick")
    testbed = next(c for c in plan.comparisons if c.name == "scenario_b_testbed")
    mnist = next(c for c in plan.comparisons if c.name == "finetune_mnist")
    assert plan.seeds_of(testbed) == [0, 1, 2, 3, 4] and plan.seeds_of(mnist) == plan.seeds == [0, 1, 2]
    result = _reproduce("--mode", "quick", "--plan-only", "--seeds", "7")
    assert result.returncode == 0 and "scenario_b_testbed: task=noise_schedule_gmm" in result.stdout
    assert f"{sum(len(c.methods) for c in plan.comparisons)} jobs, seeds [7]" in result.stdout


def test_method_overrides_go_to_their_method_only_and_must_name_a_method(tmp_path) -> None:
    comparison = Comparison(name="a", task="finetune_gaussian", bilevel="closed_form",
                            baselines=["weighted_sum", "random", "bayesian"],
                            method_overrides={"random": ["upper_estimator.n_trials=3"],
                                              "bayesian": ["upper_estimator.n_trials=3"]})
    plan = load_plan("smoke")
    plan.comparisons = [comparison]
    plain, searches = plan_commands(plan, tmp_path).values()  # one job at a time: one multirun per override set
    assert "upper_estimator=closed_form,weighted_sum" in plain and "upper_estimator.n_trials=3" not in plain
    assert "upper_estimator=random,bayesian" in searches and "++upper_estimator.n_trials=3" in searches
    commands = plan_commands(plan, tmp_path, jobs=2)  # several at a time: one multirun per method
    assert sorted(commands) == ["a.bayesian", "a.closed_form", "a.random", "a.weighted_sum"]
    for method, command in ((m, commands[f"a.{m}"]) for m in comparison.methods):
        assert f"upper_estimator={method}" in command and "seed=0" in command
        assert ("++upper_estimator.n_trials=3" in command) == (method in ("random", "bayesian"))
        assert "resume=true" in command and f"hydra.sweep.dir={tmp_path / 'a'}" in command
    with pytest.raises(ConfigError, match="method_overrides names"):
        Comparison(name="a", task="finetune_gaussian", bilevel="closed_form", baselines=[],
                   method_overrides={"bayesian": ["upper_estimator.n_trials=3"]})


def test_several_jobs_at_a_time_start_the_longest_methods_first(tmp_path) -> None:
    """Per-method planning minutes order the multiruns (longest first) until runs have finished; then the measured
    minutes do. A per-method table must name every method."""
    minutes = {"closed_form": 1.0, "grid": 0.5, "random": 9.0, "bayesian": 7.0}
    comparison = Comparison(name="a", task="finetune_gaussian", bilevel="closed_form",
                            baselines=["grid", "random", "bayesian"], minutes_per_job=minutes)
    plan = load_plan("smoke")
    plan.comparisons = [comparison]
    assert list(plan_commands(plan, tmp_path, jobs=2)) == ["a.random", "a.bayesian", "a.closed_form", "a.grid"]
    assert plan.estimate_minutes(tmp_path) == pytest.approx(17.5 * len(plan.seeds))
    finished = tmp_path / "a" / "grid" / "seed_0"
    finished.mkdir(parents=True)
    (finished / "summary.json").write_text(json.dumps({"wall_clock_s": 600.0}))  # 10 min measured
    assert list(plan_commands(plan, tmp_path, jobs=2))[0] == "a.grid"
    assert plan.finished_jobs(tmp_path) == [("a", "grid", 0)]
    left = plan.remaining_minutes(tmp_path)
    assert left == pytest.approx(plan.estimate_minutes(tmp_path) - 10.0)
    assert f"1 of {plan.num_jobs} jobs finished already (not run again): ~{left:.0f} min left" in describe(plan, tmp_path)
    with pytest.raises(ConfigError, match="minutes_per_job must name every method"):
        Comparison(name="a", task="finetune_gaussian", bilevel="closed_form", baselines=["grid"],
                   minutes_per_job={"closed_form": 1.0})


def test_one_job_at_a_time_runs_in_this_process_past_failures_and_a_stop_ends_the_plan(tmp_path, monkeypatch) -> None:
    """``--jobs 1`` runs every multirun through ``run.py`` in this process: a failed one does not keep the others
    from running (the error names it afterwards); one stopped by a signal (130 / 143) ends the plan at once."""
    from bilevel_diffusion import reproduce

    plan = load_plan("smoke")
    labels = list(plan_commands(plan, tmp_path))
    calls: list[list[str]] = []

    def first_exits_with(status: int) -> None:
        calls.clear()
        monkeypatch.setattr(reproduce, "run_in_process", lambda args: calls.append(list(args)) or (
            status if len(calls) == 1 else 0))

    first_exits_with(1)
    with pytest.raises(RuntimeError, match=re.escape(f"1 of {len(labels)} multiruns failed ({labels[0]})")):
        run_plan(plan, tmp_path)
    assert len(calls) == len(labels) > 1 and all(args[0] == "-m" for args in calls)
    first_exits_with(143)
    with pytest.raises(SystemExit) as stop:
        run_plan(plan, tmp_path)
    assert stop.value.code == 143 and len(calls) == 1


def test_a_stop_inside_an_in_process_multirun_ends_the_plan_with_its_status(tmp_path) -> None:
    """The real path: SIGINT while a job runs in this process stops it at a safe point (run.py's exit 130), and
    the plan starts no further multirun."""
    comparison = Comparison(name="c", task="finetune_gaussian", experiment="smoke", bilevel="closed_form",
                            baselines=["weighted_sum"],
                            method_overrides={"closed_form": ["upper_estimator.num_steps=100000"]})
    plan = load_plan("smoke")
    plan.comparisons, plan.seeds = [comparison], [0]
    assert len(plan_commands(plan, tmp_path)) == 2
    started, done = tmp_path / "c" / "closed_form" / "seed_0" / "metrics.jsonl", threading.Event()

    def interrupt_once_running() -> None:  # never after the test: a stray SIGINT would stop the whole session
        while not done.wait(0.05):
            if started.exists():
                signal.raise_signal(signal.SIGINT)
                return

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    watcher = threading.Thread(target=interrupt_once_running, daemon=True)
    try:
        watcher.start()
        with pytest.raises(SystemExit) as stop:
            run_plan(plan, tmp_path, ["logger=none", "hardware=cpu"])
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGINT, previous)
    assert stop.value.code == 130 and started.exists()
    assert not (tmp_path / "c" / "weighted_sum").exists(), "a multirun started after the stop"


def test_ctrl_c_with_several_jobs_at_a_time_starts_no_other_multirun(tmp_path) -> None:
    plan, started, lock = load_plan("smoke"), [], threading.Lock()

    def runner(label: str, command: list[str]) -> None:
        with lock:
            started.append(label)
            first = len(started) == 1
        time.sleep(0.3)  # every multirun is queued by now, the main thread waits for the first
        if first:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C: the main thread gets KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_plan(plan, tmp_path, jobs=2, runner=runner)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(started) <= 4 < len(plan_commands(plan, tmp_path, jobs=2))  # the two running, at most one more each


def test_unknown_mode_and_full_plan_print_one_clear_line() -> None:
    bad = _reproduce("--mode", "nope", "--plan-only")
    assert bad.returncode != 0 and "MODE must be one of" in bad.stderr and "Traceback" not in bad.stderr
    full = _reproduce("--mode", "full", "--plan-only")
    assert full.returncode == 0 and "estimate: ~" in full.stdout and "finetune_synthetic" in full.stdout


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """``scripts/reproduce.py --mode smoke`` once (about a minute on 2 cores)."""
    root = tmp_path_factory.mktemp("reproduce")
    result = _reproduce("--mode", "smoke", "--runs", str(root / "runs"), "--results", str(root / "results"))
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_smoke_writes_every_table_and_figure(smoke) -> None:
    results = smoke / "results"
    for table in ("table1", "table2"):
        for ext in ("md", "tex", "csv"):
            assert (results / f"{table}.{ext}").stat().st_size > 100, f"{table}.{ext}"
    for figure in ("rewards_vs_lambda", "samples_small_chosen_large", "lambda_trace"):
        assert (results / "finetune_mnist" / f"{figure}.png").stat().st_size > 5_000, figure
    for figure in ("schedules", "schedule_params", "anytime"):
        assert (results / "noise_schedule_gmm" / f"{figure}.png").stat().st_size > 5_000, figure
    assert (results / "finetune_mnist" / "anytime.png").stat().st_size > 5_000
    for table in ("table1", "table2"):
        views = (results / f"{table}_views.md").read_text()
        assert "(a) The paper's table" in views and "(b) Equal compute" in views and "(c) Compute-to-match" in views
    table1, table2 = (results / "table1.md").read_text(), (results / "table2.md").read_text()
    for c in load_plan("smoke").comparisons:
        for method in c.methods:
            assert f"| {c.task} | {method} | 1 |" in (table2 if c.task.startswith("noise_schedule") else table1)


def test_smoke_jobs_write_the_run_contract(smoke) -> None:
    for c in load_plan("smoke").comparisons:
        for method in c.methods:
            summary = assert_run_contract(smoke / "runs" / c.name / method / "seed_0", c.task, method)
            if c.task.startswith("finetune"):
                for key in ("lambda", "r1", "r2", "fid_vs_pretrained", "method_nfe"):
                    assert key in summary, f"{c.task}/{method}: summary.json lacks {key}"
                assert summary["objective"] == pytest.approx(-summary["r1"])
                assert summary["sampler_nfe"] > summary["method_nfe"] >= 0 and summary["fid_vs_pretrained"] >= 0


def test_smoke_scenario_a_runs_log_lambda_and_search_the_papers_grid(smoke) -> None:
    runs = smoke / "runs" / "finetune_mnist"
    bilevel = json.loads((runs / "closed_form" / "seed_0" / "summary.json").read_text())
    assert bilevel["prompts"] == [3] and bilevel["r1"] <= 0
    assert {"lambda", "hypergrad", "ess"} <= set(read_jsonl(runs / "closed_form" / "seed_0" / "metrics.jsonl")[0])
    grid_dir = runs / "grid" / "seed_0"
    grid = json.loads((grid_dir / "summary.json").read_text())
    assert grid["trials"] == 3 and min(abs(math.log10(grid["lambda"]) - k) for k in (-2, 0, 2)) < 1e-9  # 0.01, 1, 100
    assert (grid_dir / "study.db").is_file() and (grid_dir / "rewards_vs_lambda.png").is_file()


def test_smoke_scenario_b_bilevel_run_reports_its_schedule_and_both_networks(smoke) -> None:
    run_dir = smoke / "runs" / "scenario_b_testbed" / "zeroth_order" / "seed_0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["objective"] == summary["fid"] > 0 and summary["is"] >= 1.0
    assert summary["sampler_nfe"] == summary["objective_nfe"] + summary["report_nfe"] > summary["report_nfe"]
    assert set(summary["schedule"]) == {"name", "start", "end", "tau", "eps"} and summary["trainings_used"] == 1
    assert summary["theta_z_minus_theta_y"] > 0 and (run_dir / "schedule.png").is_file()
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "objective_fid" in r]
    assert rows and all({"gamma", "gnorm_zo_q", "gnorm_sm_z_q", "gnorm_sm_y_q", "schedule_start"} <= set(r)
                        for r in rows)


def test_smoke_testbed_bilevel_run_logs_its_diagnostics(smoke) -> None:
    """The testbed's Alg. 6 run (docs/testbed.md): first-order theta_z step (its backward passes in the cost), F
    scaled by F_0, and every bilevel step logs the ratio of the q-gradient's parts and its SNR (free with the preset's
    4 directions)."""
    run_dir = smoke / "runs" / "scenario_b_testbed" / "zeroth_order" / "seed_0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["fid_features"].startswith("random Fourier features") and summary["eval_num_samples"] == 100
    assert summary["objective_ref"] > 0 and summary["sampler_cost"] > summary["sampler_nfe"]
    bilevel = [row for row in read_jsonl(run_dir / "metrics.jsonl") if "gamma" in row]
    assert len(bilevel) == 2 and all(row["objective_ref"] == summary["objective_ref"] for row in bilevel)
    assert all(row["q_grad_snr"] >= 0 for row in bilevel)
    # theta_z = theta_y at the first bilevel step (no penalty term yet), apart afterwards
    assert "term_ratio_q" not in bilevel[0] and bilevel[1]["term_ratio_q"] > 0
    fingerprint = json.loads((run_dir / "fingerprint.json").read_text())["config"]
    assert fingerprint["upper_estimator.theta_z_gradient"] == "backprop"
    assert fingerprint["upper_estimator.gamma"] == 100.0 and (run_dir / "samples.png").is_file()


def test_smoke_searches_measure_their_answers_and_the_last_is_the_reported_one(smoke) -> None:
    """Each trial that became the answer so far carries its evaluation-noise measurement, every trial its own
    compute; the chosen trial's measurement is the run's reported objective (same point, same noise), so the anytime
    curve ends where the table row is."""
    for comparison in ("scenario_b_testbed", "finetune_mnist"):
        for method in ("random", "bayesian"):
            run_dir = smoke / "runs" / comparison / method / "seed_0"
            trials = [row for row in read_jsonl(run_dir / "metrics.jsonl") if "trial" in row]
            summary = json.loads((run_dir / "summary.json").read_text())
            assert len(trials) == 2 and math.isfinite(trials[0]["report_objective"])
            assert ("report_objective" in trials[1]) == (trials[1]["objective"] < trials[0]["objective"])
            assert all(0 < a["search_s"] < b["search_s"] and a["search_cost"] < b["search_cost"]
                       for a, b in zip(trials, trials[1:]))
            chosen = min(trials, key=lambda t: t["objective"])
            assert chosen["report_objective"] == pytest.approx(summary["objective"], rel=1e-5), (comparison, method)
            assert trials[-1]["search_s"] < summary["wall_clock_s"] - sum(t.get("report_s", 0) for t in trials) + 1e-6


def test_resuming_a_finished_job_runs_nothing_and_keeps_its_results(smoke, capsys) -> None:
    run_dir = smoke / "runs" / "finetune_mnist" / "grid" / "seed_0"
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    code, _ = run_in_process("task=finetune_mnist", "experiment=smoke", "upper_estimator=grid",
                             "upper_estimator.num_points=3", "resume=true", f"hydra.run.dir={run_dir}")
    assert code == 0 and "nothing to resume" in capsys.readouterr().out
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != "run.log"} == {k: v for k, v in before.items() if k != "run.log"}


def test_records_keep_what_the_tables_and_a_resume_need_and_no_weights(tmp_path) -> None:
    from bilevel_diffusion.reporting.run_records import export_records, restore_records

    runs = tmp_path / "runs"
    finished, search, stopped = (runs / "c" / m / "seed_0" for m in ("fixed", "random", "zeroth_order"))
    for run_dir in (finished, search, stopped):
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "config.yaml").write_text("seed: 0\n")
        (run_dir / "metrics.jsonl").write_text("{}\n")
        (run_dir / "checkpoints" / "last.pt").write_bytes(b"w" * 10)
    (finished / "summary.json").write_text("{}")
    (finished / ".lock").write_text("")
    (finished / "samples.png").write_bytes(b"p" * 100)
    (finished / "huge.npz").write_bytes(b"x" * 2000)
    (search / ".hydra").mkdir()
    (search / ".hydra" / "config.yaml").write_text("seed: 0\n")  # Hydra's copy: kept (not a run of its own)
    (search / "study.db").write_bytes(b"db")  # a search part-way: goes on from its finished trials
    (runs / "c" / "comparison.json").write_text("{}")
    records = tmp_path / "records"
    written = export_records(runs, records, max_bytes=1000)
    assert {p.relative_to(records).as_posix() for p in written} == {
        "c/comparison.json", "c/fixed/seed_0/config.yaml", "c/fixed/seed_0/metrics.jsonl", "c/fixed/seed_0/summary.json",
        "c/fixed/seed_0/samples.png", "c/random/seed_0/config.yaml", "c/random/seed_0/metrics.jsonl",
        "c/random/seed_0/study.db", "c/random/seed_0/.hydra/config.yaml"}  # no weights, lock or huge file; the stopped bilevel run not at all
    for nested in (runs / "records", runs, tmp_path):
        with pytest.raises(ValueError, match="one holds the other"):
            export_records(runs, nested)
    again = tmp_path / "again"
    (again / "c" / "random" / "seed_0").mkdir(parents=True)
    (again / "c" / "random" / "seed_0" / "study.db").write_bytes(b"newer")
    restored = restore_records(records, again)
    assert (again / "c" / "random" / "seed_0" / "study.db").read_bytes() == b"newer"  # never replaced
    assert len(restored) == len(written) - 1 and (again / "c" / "fixed" / "seed_0" / "summary.json").exists()


def test_smoke_records_rebuild_the_same_tables_and_a_restored_finished_job_runs_nothing(smoke, tmp_path,
                                                                                       capsys) -> None:
    from bilevel_diffusion.reporting.run_records import restore_records
    sys.path.insert(0, str(ROOT / "scripts"))
    from aggregate import aggregate

    records = smoke / "results" / "runs"
    assert any(records.rglob("summary.json")) and not any(records.rglob("checkpoints"))
    aggregate(records, tmp_path / "again")
    for table in ("table1.csv", "table2.csv"):
        assert (tmp_path / "again" / table).read_text() == (smoke / "results" / table).read_text()
    run_dir = tmp_path / "runs" / "finetune_mnist" / "grid" / "seed_0"
    restore_records(records, tmp_path / "runs")  # a fresh checkout with the committed records
    capsys.readouterr()
    code, _ = run_in_process("task=finetune_mnist", "experiment=smoke", "upper_estimator=grid",
                             "upper_estimator.num_points=3", "resume=true", f"hydra.run.dir={run_dir}")
    assert code == 0 and "nothing to resume" in capsys.readouterr().out
