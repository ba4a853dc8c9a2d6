"""``make pretrain``: train the embedded MNIST eps-model of ``task=finetune_mnist`` by its recipe
(``bilevel_diffusion.pretrained_mnist.RECIPE``), evaluate it and write its weights, card and sample grid.

    python scripts/pretrain_mnist.py [--work-dir outputs/pretrain_mnist] [--device cpu|cuda]
    python scripts/pretrain_mnist.py --recipe wide   # a candidate: outputs/pretrain_mnist_wide/, assets untouched

Resumable: rerun the same command after a stop (checkpoints every 250 steps in --work-dir). See
docs/pretrained_mnist.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bilevel_diffusion import pretrained_mnist, stopping  # noqa: E402
from bilevel_diffusion.checkpoint import save_cached  # noqa: E402
from bilevel_diffusion.data.mnist import load_mnist5k  # noqa: E402
from bilevel_diffusion.errors import ConfigError  # noqa: E402


#: the small evaluation that tests/test_pretrained_mnist.py repeats
CHECK_N, CHECK_STEPS = 200, 20


def time_steps(n: int, device: str) -> None:
    """Seconds per training step of every recipe (and, for one with ``mixed_precision``, of its float32 variant),
    measured alternately (A B A B) so that load hits all alike; recipes that differ only in their number of steps
    share one timing (the first named)."""
    print(f"torch threads: {torch.get_num_threads()}, device {device}, {n} steps each")
    variants, seen = {}, set()
    for name, recipe in pretrained_mnist.RECIPES.items():
        same_step = json.dumps({k: v for k, v in recipe.items() if k != "num_steps"}, sort_keys=True)
        if same_step in seen:
            continue
        seen.add(same_step)
        variants[name] = recipe
        if recipe.get("mixed_precision"):
            variants[f"{name} (float32)"] = {**recipe, "mixed_precision": None}
    for round_ in range(2):
        for name, recipe in variants.items():
            torch.manual_seed(0)
            network = pretrained_mnist.build_network(recipe).to(device)
            solver = pretrained_mnist.build_solver(network, recipe)
            alphas_cumprod = pretrained_mnist.build_schedule(recipe).alphas_cumprod().to(device)
            generator, x0 = torch.Generator().manual_seed(0), torch.randn(int(recipe["batch_size"]), 1, 28, 28)
            solver.step(x0.to(device), alphas_cumprod, generator)  # warm-up
            start = time.perf_counter()
            for _ in range(n):
                solver.step(x0.to(device), alphas_cumprod, generator)
            print(f"round {round_ + 1}: {name:16s} {sum(p.numel() for p in network.parameters()):>9,} weights  "
                  f"{(time.perf_counter() - start) / n:.2f} s/step", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="shipped", choices=sorted(pretrained_mnist.RECIPES),
                        help="shipped: the embedded model's recipe; others are candidates (pretrained_mnist.RECIPES)")
    parser.add_argument("--work-dir", help="checkpoints, resumable (default outputs/pretrain_mnist[_RECIPE])")
    parser.add_argument("--cache-dir", default="outputs/cache", help="the FID classifier and the parsed digits")
    parser.add_argument("--out", help="the weights, card beside (.json), sample grid beside (.png); default: the "
                                      "embedded model's files for the shipped recipe, WORK_DIR/mnist_eps.safetensors "
                                      "for a candidate")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--time-steps", type=int, metavar="N",
                        help="only time N training steps of every recipe (batch as the recipe, two rounds, the recipes "
                             "alternating) and exit")
    args = parser.parse_args()
    if args.time_steps:
        time_steps(args.time_steps, args.device)
        return
    shipped = args.recipe == "shipped"
    recipe = pretrained_mnist.RECIPES[args.recipe]
    work = Path(args.work_dir or ("outputs/pretrain_mnist" + ("" if shipped else f"_{args.recipe}")))
    out = Path(args.out or (pretrained_mnist.WEIGHTS if shipped else work / "mnist_eps.safetensors"))
    data = load_mnist5k(recipe["data"]["heldout_per_class"], recipe["data"]["seed"], args.cache_dir)
    try:
        with stopping.handling_signals():  # Ctrl-C / SIGTERM: a checkpoint after the current step, then stop
            network, spent = pretrained_mnist.train(data, work, recipe, args.device)  # seconds over all attempts
    except ConfigError as err:
        sys.exit(f"error: {err}")
    except stopping.Stopped as stop:
        print(f"{stop}; rerun the same command to continue", file=sys.stderr)
        sys.exit(128 + stop.signum)
    legacy = work / "train_wall_clock_s.json"  # the time of attempts from before checkpoints carried it
    if legacy.exists():
        spent += json.loads(legacy.read_text())["seconds"]
    network = network.cpu()
    weights = pretrained_mnist.stored_weights(network, recipe)  # rounds the network to the file's dtype
    print("evaluating (1,000 samples, 50 DDIM steps) ...")
    report = pretrained_mnist.evaluate(network, data, Path(args.cache_dir), recipe=recipe, device=args.device)
    samples = report.pop("samples")
    check = pretrained_mnist.evaluate(network, data, Path(args.cache_dir), num_samples=CHECK_N,
                                      num_inference_steps=CHECK_STEPS, recipe=recipe, device=args.device)
    check.pop("samples")
    from torchvision.utils import save_image

    grid = (ROOT / "docs" / "figures" / "pretrained_mnist_samples.png" if out.resolve() == pretrained_mnist.WEIGHTS
            else out.with_suffix(".png"))
    grid.parent.mkdir(parents=True, exist_ok=True)
    save_image((samples[:100] + 1) / 2, grid, nrow=10, padding=1)
    card = {"recipe": recipe, "num_parameters": sum(p.numel() for p in network.parameters()),
            "train_wall_clock_s": round(spent, 1), "torch_threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", device {args.device}",
            "evaluation": report, "check": check,
            "sample_grid": str(grid.relative_to(ROOT) if grid.is_relative_to(ROOT) else grid)}
    digest = save_cached(weights, out, card)
    print(json.dumps({**card, "sha256": digest}, indent=1))


if __name__ == "__main__":
    main()
