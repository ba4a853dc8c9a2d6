"""The embedded pre-trained MNIST eps-model of ``task=finetune_mnist`` (the CPU-scale stand-in for Stable Diffusion in
Scenario A, paper Sec. 3.1): its recipe, training (``make pretrain``), evaluation and loading.

The weights (EMA, float32, no optimizer state) and their card live in ``bilevel_diffusion/assets/``; the card holds
the recipe, the training time, the sample quality next to the real-data floor at the same n, and a SHA-256 of the
weights. See ``docs/pretrained_mnist.md``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bilevel_diffusion.data.mnist import ImageData
from bilevel_diffusion.lower_solvers.score_matching import ScoreMatchingSolver, fit
from bilevel_diffusion.models.unet import UNetEps
from bilevel_diffusion.schedules.family import CosineSchedule

ASSETS = Path(__file__).parent / "assets"
WEIGHTS = ASSETS / "mnist_eps.safetensors"
CARD = ASSETS / "mnist_eps.json"

#: the recipe: architecture, schedule, optimisation (``make pretrain`` trains exactly this)
RECIPE: dict[str, Any] = {
    "architecture": {"sample_size": 28, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
                     "block_out_channels": [16, 32, 64], "down_block_types": ["DownBlock2D"] * 3,
                     "up_block_types": ["UpBlock2D"] * 3, "norm_num_groups": 8},
    "schedule": {"name": "cosine", "start": 0.0, "end": 1.0, "tau": 1.0, "eps": 0.008, "num_train_timesteps": 1000},
    "data": {"name": "mnist5k", "heldout_per_class": 100, "seed": 0},
    "num_steps": 6000, "batch_size": 128, "lr": 2e-3, "weight_decay": 0.01, "ema_decay": 0.999, "seed": 0,
}


def build_network(recipe: dict[str, Any] = RECIPE) -> UNetEps:
    return UNetEps(**recipe["architecture"])


def build_schedule(recipe: dict[str, Any] = RECIPE) -> CosineSchedule:
    return CosineSchedule(**recipe["schedule"])


def train(data: ImageData, work_dir: Path, recipe: dict[str, Any] = RECIPE, device: str = "cpu",
          checkpoint_every: int = 250) -> nn.Module:
    """Score matching (paper Alg. 3) by the project's one loop; resumable from ``work_dir/last.pt``.
    Returns the EMA network."""
    torch.manual_seed(int(recipe["seed"]))
    network = build_network(recipe).to(device)
    solver = ScoreMatchingSolver(network, num_steps=int(recipe["num_steps"]), batch_size=int(recipe["batch_size"]),
                                 lr=float(recipe["lr"]), weight_decay=float(recipe["weight_decay"]),
                                 ema_decay=float(recipe["ema_decay"]))
    fit(solver, lambda n, generator: data.batch(n, generator)[0], build_schedule(recipe).alphas_cumprod(),
        torch.Generator().manual_seed(int(recipe["seed"])), device, checkpoint_path=Path(work_dir) / "last.pt",
        checkpoint_every=checkpoint_every, resume=True, desc="pre-training the MNIST eps-model")
    return solver.ema_model()


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
