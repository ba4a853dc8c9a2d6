"""Aggregation of run directories into Tables 1 and 2 (mean ± std over seeds)."""

from __future__ import annotations

import csv
import json
import runpy
import subprocess
import sys

import pytest

from bilevel_diffusion.reporting.tables import write_tables
from conftest import ROOT


def _run(folder, **summary) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))


def test_tables_average_over_seeds_and_split_by_scenario(tmp_path) -> None:
    runs = tmp_path / "runs"
    _run(runs / "a", task="train_mnist", method="fixed", seed=0, fid=10.0, kid=0.01, eval_num_samples=64,
         wall_clock_s=5.0, sampler_nfe=100, **{"is": 2.0})
    _run(runs / "b", task="train_mnist", method="fixed", seed=1, fid=14.0, kid=0.03, eval_num_samples=64,
         wall_clock_s=7.0, sampler_nfe=100, **{"is": 2.0})
    _run(runs / "c", task="finetune_gaussian", method="closed_form", seed=0, r1=-1.5, r2=2.0, wall_clock_s=1.0,
         sampler_nfe=0, fid_vs_pretrained=0.5, **{"lambda": 0.25})
    tables = write_tables(runs, tmp_path / "out", {"train_mnist": {"fixed": "n/a"}})
    (row,) = tables["table2"]
    assert row.seeds == [0, 1] and row.cells["fid"] == (12.0, 2.8284271247461903) and row.paper == "n/a"
    assert row.cells["trainings_used"] is None
    (gauss,) = tables["table1"]
    assert gauss.cells["lambda"] == (0.25, 0.0)
    markdown = (tmp_path / "out" / "table2.md").read_text()
    assert "| train_mnist | fixed | 2 | 12.00 ± 2.83 | 0.0200 ± 0.0141 | 64 | 2.00 |" in markdown  # n beside FID/KID
    assert r"12.00 $\pm$ 2.83" in (tmp_path / "out" / "table2.tex").read_text()
    (runs / "d").mkdir()  # a search: its trials' measurement time, from its stored trials
    (runs / "d" / "summary.json").write_text(json.dumps({"task": "train_mnist", "method": "random", "seed": 0,
                                                         "fid": 9.0, "wall_clock_s": 20.0}))
    (runs / "d" / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "trial": i, "report_s": 1.5}) + "\n"
                                                      for i in range(3)))
    random = next(r for r in write_tables(runs, tmp_path / "out")["table2"] if r.method == "random")
    assert random.cells["measurement_s"] == (4.5, 0.0) and random.cells["wall_clock_s"] == (20.0, 0.0)
    with (tmp_path / "out" / "table1.csv").open() as handle:
        (record,) = list(csv.DictReader(handle))
    assert float(record["r1_mean"]) == -1.5 and record["method"] == "closed_form"


def test_aggregate_script_reruns_on_existing_runs(tmp_path, monkeypatch) -> None:
    _run(tmp_path / "runs" / "x", task="train_mnist", method="fixed", seed=3, fid=1.0, wall_clock_s=1.0, sampler_nfe=1)
    command = [sys.executable, str(ROOT / "scripts" / "aggregate.py"), str(tmp_path / "runs"), "--out",
               str(tmp_path / "r")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    first = (tmp_path / "r" / "table2.md").read_text()
    assert "| train_mnist | fixed | 1 | 1.00 | – | – |" in first
    assert not list((tmp_path / "r").glob("table1.*"))  # no Scenario A run: no empty Table 1
    monkeypatch.setattr(sys, "argv", command[1:])  # the rerun in this process (the script's imports paid once)
    runpy.run_path(command[1], run_name="__main__")
    assert (tmp_path / "r" / "table2.md").read_text() == first
    missing = subprocess.run([*command[:2], str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode != 0 and "not a folder of runs" in missing.stderr


def test_scenario_a_samples_figure_shows_every_lambda_loop_that_ran(tmp_path, monkeypatch) -> None:
    """One panel per chosen lambda (the bilevel method first, then the other loops that ran), between the grid's
    smallest and largest lambda; a loop that did not run gets no panel."""
    import matplotlib.pyplot as plt

    from bilevel_diffusion.reporting import scenario_a

    def image(path, value) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        plt.imsave(path, [[value, value], [value, value]], cmap="gray", vmin=0, vmax=1)

    runs = {}
    for method, lam, grey in (("grid", 1.0, 0.5), ("closed_form", 0.0158, 0.25), ("sampler_difference", 0.0845, 0.75)):
        runs[method] = tmp_path / method
        _run(runs[method], task="finetune_mnist", method=method, seed=0, prompts=[3, 7], **{"lambda": lam})
        image(runs[method] / "samples.png", grey)
    image(runs["grid"] / "trial_lambda_0.01.png", 0.0)
    image(runs["grid"] / "trial_lambda_100.png", 1.0)
    titles, greys = [], []

    def capture(fig, path):
        titles.append([ax.get_title() for ax in fig.axes])
        greys.append([float(ax.images[0].get_array()[..., 0].mean()) for ax in fig.axes])
        plt.close(fig)
        return path

    monkeypatch.setattr(scenario_a, "save_figure", capture)
    monkeypatch.setattr(scenario_a, "plot_rewards_vs_lambda", lambda runs, path: path)
    scenario_a.write_figures(runs, tmp_path / "out", "closed_form", ["sampler_difference", "closed_form_pool"])
    assert titles[-1] == [r"$\lambda$ = 0.01 (grid)", r"$\lambda$ = 0.0158 (closed_form)",
                          r"$\lambda$ = 0.0845 (sampler_difference)", r"$\lambda$ = 100 (grid)"]
    assert greys[-1] == pytest.approx([0.0, 0.25, 0.75, 1.0], abs=0.01)  # each panel shows that method's samples
    scenario_a.write_figures({k: v for k, v in runs.items() if k != "sampler_difference"}, tmp_path / "out",
                             "closed_form", ["sampler_difference"])
    assert [title.split("(")[-1] for title in titles[-1]] == ["grid)", "closed_form)", "grid)"]
