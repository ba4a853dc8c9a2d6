"""``make pretrain``: train the embedded MNIST eps-model by its recipe, evaluate it and write weights + card.

    python scripts/pretrain_mnist.py [--work-dir outputs/pretrain_mnist] [--out-dir src/bilevel_diffusion/assets]

Resumable: rerun the same command after a stop. See docs/pretrained_mnist.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bilevel_diffusion import pretrained_mnist  # noqa: E402
from bilevel_diffusion.data.mnist import load_mnist5k  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="outputs/pretrain_mnist", help="checkpoints (resumable)")
    parser.add_argument("--cache-dir", default="outputs/cache")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    recipe = pretrained_mnist.RECIPE
    data = load_mnist5k(recipe["data"]["heldout_per_class"], recipe["data"]["seed"], args.cache_dir)
    network = pretrained_mnist.train(data, Path(args.work_dir), recipe, args.device)
    torch.save(network.state_dict(), Path(args.work_dir) / "ema.pt")
    print(f"trained; EMA weights in {args.work_dir}/ema.pt")


if __name__ == "__main__":
    main()
