"""The embedded MNIST eps-model's card numbers against the number of DDIM steps: does more sampling close the gap to
the confidence target, or is it the network? (docs/pretrained_mnist.md)

    python scripts/pretrained_mnist_steps.py [--steps 20,50,100,250] [--num-samples 500] [--out FILE.json]

Every row draws the same ``--num-samples`` starting noises (seed 1234, as the card) and evaluates them as the card
does (``pretrained_mnist.evaluate``: FID and KID on the project CNN against the 1,000 held-out digits, the floor at
the same n, the fraction classified with p > 0.9).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bilevel_diffusion import pretrained_mnist  # noqa: E402
from bilevel_diffusion.data.mnist import load_mnist5k  # noqa: E402

COLUMNS = ("num_inference_steps", "num_samples", "fid", "fid_floor", "fid_over_floor", "confident_fraction",
           "confident_fraction_heldout", "seconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="20,50,100,250", type=lambda t: [int(s) for s in t.split(",")],
                        help="DDIM step counts, comma-separated")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--cache-dir", default="outputs/cache", help="the FID classifier and the parsed digits")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    if args.num_samples < 2 or any(s < 1 for s in args.steps):
        sys.exit("error: --num-samples must be >= 2 and every --steps entry >= 1")
    recipe = pretrained_mnist.RECIPE
    data = load_mnist5k(recipe["data"]["heldout_per_class"], recipe["data"]["seed"], args.cache_dir)
    network, rows = pretrained_mnist.load(), []
    print(f"torch threads: {torch.get_num_threads()}")
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS), flush=True)
    for steps in args.steps:
        start = time.perf_counter()
        report = pretrained_mnist.evaluate(network, data, Path(args.cache_dir), num_samples=args.num_samples,
                                           num_inference_steps=steps)
        report.pop("samples")
        rows.append({**report, "seconds": round(time.perf_counter() - start, 1)})
        print("| " + " | ".join(f"{rows[-1][c]:.4g}" if isinstance(rows[-1][c], float) else str(rows[-1][c])
                                for c in COLUMNS) + " |", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"torch_threads": torch.get_num_threads(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
