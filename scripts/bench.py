"""``make bench``: speed targets of the project, medians over repeats, written to JSON and Markdown.

``python scripts/bench.py [--repeats 5] [--out results/bench] [--only scenario_b_mnist_time,...]``

Every row records the date it was measured; ``--only`` measures the named rows (the function names below without
``bench_``) and keeps the other rows of the existing ``bench.json`` as they were.

Micro-benchmarks on the MNIST UNet of ``configs/model/unet_mnist.yaml``:
- guided vs plain sampling step (paper Alg. 5 vs Alg. 4) on the same model and batch; target <= 2.5x;
- score-matching training throughput of our solver against a plain reference loop written like diffusers'
  unconditional-training example (AdamW, LR schedule, EMA, gradient clipping) on the same loss, model and batch:
  what is measured is our machinery (NaN/Inf checks, distributed hooks); target >= 0.95x;
- the closed-form hyper-gradient (Eq. 13) on a pool against one guided sample; target < 1%;
- compute-to-match from the stored trials of ``make reproduce`` (``--runs``, default outputs/reproduce/quick, or its
  committed records results/runs/ where that holds no runs; the
  derived view (c) of ``bilevel_diffusion/reporting/views.py``): Scenario B, the bilevel run's wall clock where it
  reached Bayesian optimisation's final FID over the wall clock Bayesian optimisation needed to first reach it
  (target <= 1/5), on the testbed and on MNIST (``--medium-runs``, ``make reproduce MODE=medium``, the same
  defaults under medium/); Scenario A, the
  same in sampler cost against the search with the best final r1 (target <= 1/4). Median over seeds with a 95%
  bootstrap interval; a seed where the bilevel run did not reach it counts as inf.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bilevel_diffusion.lower_solvers.guided_sampling import GuidedSampler  # noqa: E402
from bilevel_diffusion.lower_solvers.score_matching import ScoreMatchingSolver, score_matching_loss  # noqa: E402
from bilevel_diffusion.metrics.classifier import MNISTClassifier  # noqa: E402
from bilevel_diffusion.reporting.views import best_search, comparison_traces, compute_to_match, match_summary  # noqa: E402,E501
from bilevel_diffusion.reproduce import results_dir  # noqa: E402
from bilevel_diffusion.schedules.family import CosineSchedule  # noqa: E402
from bilevel_diffusion.upper_estimators.closed_form import RewardPool, hypergradient  # noqa: E402


def median_seconds(*fns: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Median wall time of each function; the functions take turns, so a load change hits them alike."""
    for fn in fns * warmup:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in times]


def unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return instantiate(OmegaConf.load(ROOT / "configs" / "model" / "unet_mnist.yaml"))()  # the config is a factory


def bench_guided_step(repeats: int, batch: int = 32, steps: int = 25) -> dict:
    """Seconds per sampling step with and without look-ahead reward guidance (a CNN log-probability reward), at the
    default 25 DDIM steps of lower_solver=guided_sampling (the first cosine step is formed in float64)."""
    model, classifier = unet().eval(), MNISTClassifier().eval()
    betas = CosineSchedule(start=0.0, end=1.0, tau=1.0, eps=0.008).betas()
    sampler = GuidedSampler(num_steps=steps, batch_size=batch)
    noise = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    reward = lambda x: F.log_softmax(classifier(x), dim=1)[:, 3]  # noqa: E731
    plain, guided = (seconds / steps for seconds in median_seconds(
        lambda: sampler.sample(model, betas, noise), lambda: sampler.sample(model, betas, noise, reward, lam=1.0),
        repeats=repeats))
    return {"name": "guided / plain sampling step", "plain_s": plain, "guided_s": guided,
            "ratio": guided / plain, "target": "<= 2.5", "met": guided / plain <= 2.5,
            "setting": f"MNIST UNet, batch {batch}, {steps} DDIM steps"}


def bench_training_throughput(repeats: int, batch: int = 64, steps: int = 5) -> dict:
    """Images/s of ScoreMatchingSolver.step against a plain loop with the same optimiser, schedule, EMA, clipping."""
    abar = CosineSchedule(start=0.0, end=1.0, tau=1.0, eps=0.008).alphas_cumprod()
    x0 = torch.rand(batch, 1, 28, 28) * 2 - 1
    solver = ScoreMatchingSolver(unet(), num_steps=10_000, batch_size=batch, lr=1e-4)
    generator = torch.Generator().manual_seed(0)

    def ours() -> None:
        for _ in range(steps):
            solver.step(x0, abar, generator)

    reference_model = unet()
    optimizer = torch.optim.AdamW(reference_model.parameters(), lr=1e-4)
    lr_scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-4, total_steps=10_000)
    ema = EMAModel(reference_model.parameters(), decay=0.999)

    def reference() -> None:
        for _ in range(steps):
            loss = score_matching_loss(reference_model, abar, x0, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(reference_model.parameters(), 1.0)
            optimizer.step()
            lr_scheduler.step()
            ema.step(reference_model.parameters())

    ours_ips, ref_ips = (batch * steps / seconds for seconds in median_seconds(ours, reference, repeats=repeats))
    return {"name": "training throughput (ours / plain loop)", "ours_images_per_s": ours_ips,
            "reference_images_per_s": ref_ips, "ratio": ours_ips / ref_ips, "target": ">= 0.95",
            "met": ours_ips / ref_ips >= 0.95, "setting": f"MNIST UNet, batch {batch}"}


def bench_closed_form_cost(repeats: int, pool_size: int = 4096) -> dict:
    """One Eq. 13 hyper-gradient on a pool of ``pool_size`` rewards against one guided MNIST sample."""
    generator = torch.Generator().manual_seed(0)
    pool = RewardPool(torch.randn(pool_size, generator=generator), torch.randn(pool_size, generator=generator))
    (estimator,) = median_seconds(lambda: hypergradient(pool, 0.5), repeats=repeats * 20)
    guided = bench_guided_step(repeats, batch=1, steps=25)["guided_s"] * 25
    return {"name": "closed-form hyper-gradient / one guided sample", "estimator_s": estimator,
            "guided_sample_s": guided, "ratio": estimator / guided, "target": "< 0.01",
            "met": estimator / guided < 0.01, "setting": f"pool {pool_size}; MNIST UNet, 25 guided DDIM steps"}


def bench_compute_to_match(comparison_dir: Path, bilevel: str, search: str | None, axis: str, limit: float,
                           name: str, mode: str = "quick") -> dict:
    """View (c) of one comparison: the bilevel run's compute to the search's final quality over the search's
    compute to it, median over seeds [95% bootstrap interval] (``search`` None: the one with the best final
    quality)."""
    row = {"name": name, "ratio": None, "target": f"<= {limit:g}", "met": False}
    if not any(comparison_dir.glob(f"{bilevel}/seed_*/summary.json")):
        return {**row, "setting": f"not measured: no finished runs in {comparison_dir} (run `make reproduce` first)"}
    described = comparison_dir / "comparison.json"
    tolerance = json.loads(described.read_text()).get("match_tolerance", 0.0) if described.exists() else 0.0
    traces = comparison_traces(comparison_dir)
    search = search or best_search(traces, bilevel)
    summary = match_summary(compute_to_match(traces, bilevel, search, axis, tolerance))
    low, high = summary["ratio_ci95"]
    shown = (lambda v: "inf" if v is None else f"{v:.3g}")
    per_seed = ", ".join(f"seed {s}: {shown(r)}" for s, r in summary["ratios"].items())
    return {**row, "ratio": summary["ratio_median"], "ci95": summary["ratio_ci95"], "per_seed": summary["ratios"],
            "met": summary["ratio_median"] is not None and summary["ratio_median"] <= limit,
            "setting": f"{mode} runs of {comparison_dir.name}, {bilevel} vs {search}, "
                       f"{axis}, tolerance {tolerance:g}; median over {len(summary['seeds'])} seeds, 95% bootstrap "
                       f"interval [{shown(low)}, {shown(high)}]; reached in {summary['reached']}/"
                       f"{len(summary['seeds'])} seeds ({per_seed})"}


def bench_scenario_b_time(runs: Path) -> dict:
    """Scenario B (testbed): bilevel wall clock to Bayesian optimisation's quality / Bayesian's wall clock to it."""
    return bench_compute_to_match(runs / "scenario_b_testbed", "zeroth_order", "bayesian", "wall_clock_s", 1 / 5,
                                  "Scenario B: wall clock to Bayesian optimisation's final FID (bilevel / Bayesian)")


def bench_scenario_b_mnist_time(runs: Path) -> dict:
    """Scenario B on MNIST (``make reproduce MODE=medium``): the same ratio as :func:`bench_scenario_b_time`."""
    return bench_compute_to_match(runs / "scenario_b_mnist", "zeroth_order", "bayesian", "wall_clock_s", 1 / 5,
                                  "Scenario B, MNIST: wall clock to Bayesian optimisation's final FID "
                                  "(bilevel / Bayesian)", mode="medium")


def bench_scenario_a_cost(runs: Path) -> dict:
    """Scenario A (embedded MNIST model): bilevel sampler cost to the best search's r1 / the search's cost to it."""
    return bench_compute_to_match(runs / "finetune_mnist", "closed_form", None, "sampler_cost", 1 / 4,
                                  "Scenario A: sampler cost to the best search's final r1 (bilevel / search)")


def default_runs(mode: str) -> Path:
    """``outputs/reproduce/MODE`` where it holds a finished run, else the records ``make reproduce`` committed."""
    runs = ROOT / "outputs" / "reproduce" / mode
    return runs if any(runs.rglob("summary.json")) else results_dir(mode, ROOT) / "runs"


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def to_markdown(results: list[dict], info: dict) -> str:
    lines = [f"Machine: {info['processor']}, {info['cpu_count']} CPUs ({info['torch_threads']} torch threads), "
             f"torch {info['torch']}, GPU: {info['cuda'] or 'none'}", "",
             "| benchmark | setting | ratio | target | met | measured |", "|---|---|---|---|---|---|"]
    for row in results:
        measured = row.get("ratio") is not None or "ci95" in row  # ci95: measured, possibly never reached (inf)
        ratio = (f"{row['ratio']:.3g}" if row.get("ratio") is not None
                 else "inf (not reached)" if measured else "not measured")
        lines.append(f"| {row['name']} | {row['setting']} | {ratio} | {row['target']} | "
                     f"{'yes' if row.get('met') else 'no' if measured else '–'} | {row.get('measured', '–')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    parser.add_argument("--runs", type=Path, default=default_runs("quick"),
                        help="make reproduce MODE=quick run directories for the two comparison ratios "
                             "(default outputs/reproduce/quick, else the records in results/runs)")
    parser.add_argument("--medium-runs", type=Path, default=default_runs("medium"),
                        help="make reproduce MODE=medium run directories (Scenario B on MNIST; default "
                             "outputs/reproduce/medium, else results/medium/runs)")
    parser.add_argument("--only", type=lambda text: text.split(","), metavar="A,B",
                        help="measure only these rows (keys below), keep the others of OUT/bench.json")
    args = parser.parse_args()
    benches: dict[str, Callable[[], dict]] = {
        "guided_step": lambda: bench_guided_step(args.repeats),
        "training_throughput": lambda: bench_training_throughput(args.repeats),
        "closed_form_cost": lambda: bench_closed_form_cost(args.repeats),
        "scenario_b_time": lambda: bench_scenario_b_time(args.runs),
        "scenario_a_cost": lambda: bench_scenario_a_cost(args.runs),
        "scenario_b_mnist_time": lambda: bench_scenario_b_mnist_time(args.medium_runs)}
    chosen = args.only or list(benches)
    unknown = sorted(set(chosen) - set(benches))
    if unknown:
        sys.exit(f"error: --only {unknown}: not a benchmark of {sorted(benches)}")
    previous = args.out / "bench.json"
    if args.only and not previous.exists():
        sys.exit(f"error: --only keeps the other rows of {previous}, which does not exist: run without --only")
    rows = {row["name"]: row for row in json.loads(previous.read_text())["results"]} if args.only else {}
    today = time.strftime("%Y-%m-%d")
    for key in chosen:
        row = {**benches[key](), "measured": today}
        rows[row["name"]] = row  # replaces that row where it was, or comes last
    info, results = machine(), list(rows.values())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps({"machine": info, "results": results}, indent=2))
    markdown = to_markdown(results, info)
    (args.out / "bench.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
