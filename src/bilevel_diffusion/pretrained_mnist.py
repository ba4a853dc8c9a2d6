"""The embedded pre-trained MNIST eps-model of ``task=finetune_mnist`` (the CPU-scale stand-in for Stable Diffusion in
Scenario A, paper Sec. 3.1): its recipe, training (``make pretrain``), evaluation and loading.

The weights (EMA, float32, no optimizer state) and their card live in ``bilevel_diffusion/assets/``; the card holds
the recipe, the training time, the sample quality next to the real-data floor at the same n, and a SHA-256 of the
weights. See ``docs/pretrained_mnist.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from bilevel_diffusion.checkpoint import checked_tensors
from bilevel_diffusion.data.mnist import ImageData
from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.lower_solvers.score_matching import ScoreMatchingSolver, fit
from bilevel_diffusion.models.unet import UNetEps
from bilevel_diffusion.schedules.family import CosineSchedule
from bilevel_diffusion.tracking.recorder import Recorder

ASSETS = Path(__file__).parent / "assets"
WEIGHTS = ASSETS / "mnist_eps.safetensors"
CARD = ASSETS / "mnist_eps.json"

#: the first embedded model's recipe (shipped until 2026-12-04; card ``results/pretrained_mnist/small_card.json``)
SMALL: dict[str, Any] = {
    "architecture": {"sample_size": 28, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
                     "block_out_channels": [16, 32, 64], "down_block_types": ["DownBlock2D"] * 3,
                     "up_block_types": ["UpBlock2D"] * 3, "norm_num_groups": 8},
    "schedule": {"name": "cosine", "start": 0.0, "end": 1.0, "tau": 1.0, "eps": 0.008, "num_train_timesteps": 1000},
    "data": {"name": "mnist5k", "heldout_per_class": 100, "seed": 0},
    "num_steps": 6000, "batch_size": 128, "lr": 2e-3, "weight_decay": 0.01, "ema_decay": 0.999, "seed": 0,
}
#: twice the channels at every level (~4x the weights), trained with a bf16 forward pass (``mixed_precision``: half
#: the CPU step time) and stored in float16 (``weights_dtype``: 5 MB instead of 10)
WIDE: dict[str, Any] = {**SMALL, "architecture": {**SMALL["architecture"], "block_out_channels": [32, 64, 128]},
                        "mixed_precision": "bf16", "weights_dtype": "float16"}
#: the recipe of the shipped weights (``make pretrain`` trains exactly this): the wide network trained for 8,000
#: steps, the first recipe whose card meets both targets (docs/pretrained_mnist.md)
RECIPE: dict[str, Any] = {**WIDE, "num_steps": 8000}
#: recipes ``scripts/pretrain_mnist.py --recipe NAME`` trains: the shipped one and the earlier candidates
RECIPES: dict[str, dict[str, Any]] = {"shipped": RECIPE, "small": SMALL, "wide": WIDE}
#: ``weights_dtype`` values (a recipe without one is stored in float32)
WEIGHTS_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def build_network(recipe: dict[str, Any] = RECIPE) -> UNetEps:
    return UNetEps(**recipe["architecture"])


def build_schedule(recipe: dict[str, Any] = RECIPE) -> CosineSchedule:
    return CosineSchedule(**recipe["schedule"])


def build_solver(network: nn.Module, recipe: dict[str, Any] = RECIPE) -> ScoreMatchingSolver:
    """The recipe's optimisation (a recipe without ``mixed_precision`` trains in float32)."""
    return ScoreMatchingSolver(network, num_steps=int(recipe["num_steps"]), batch_size=int(recipe["batch_size"]),
                               lr=float(recipe["lr"]), weight_decay=float(recipe["weight_decay"]),
                               ema_decay=float(recipe["ema_decay"]), mixed_precision=recipe.get("mixed_precision"))


def stored_weights(network: nn.Module, recipe: dict[str, Any] = RECIPE) -> dict[str, torch.Tensor]:
    """The tensors the weights file holds: the state in the recipe's ``weights_dtype``. The network is rounded to
    them in place (float32 again), so that its card evaluates exactly what :func:`load` gives back."""
    dtype = WEIGHTS_DTYPES[recipe.get("weights_dtype", "float32")]
    tensors = {name: value.detach().to(dtype if value.is_floating_point() else value.dtype).contiguous()
               for name, value in network.state_dict().items()}
    network.load_state_dict(_as_float32(tensors))
    return tensors


def _as_float32(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.float() if value.is_floating_point() else value for name, value in tensors.items()}


def train(data: ImageData, work_dir: Path, recipe: dict[str, Any] = RECIPE, device: str = "cpu",
          checkpoint_every: int = 250) -> tuple[nn.Module, float]:
    """Score matching (paper Alg. 3) by the project's one loop; resumable from ``work_dir/last.pt`` (the loss every
    ``checkpoint_every`` steps in ``work_dir/metrics.jsonl``). Returns the EMA network and the seconds of training,
    summed over resumed attempts. A work folder that holds a training of another recipe is refused
    (:class:`ConfigError`) before anything is written to it."""
    config = Path(work_dir) / "config.yaml"
    if config.exists():
        held = OmegaConf.to_container(OmegaConf.load(config)).get("recipe")
        if held != OmegaConf.to_container(OmegaConf.create({"recipe": recipe}))["recipe"]:
            raise ConfigError(f"{work_dir} holds a training of another recipe (its config.yaml); give another "
                              f"--work-dir, or delete that folder to start over")
    torch.manual_seed(int(recipe["seed"]))
    network = build_network(recipe).to(device)
    solver = build_solver(network, recipe)
    recorder = Recorder(work_dir, OmegaConf.create({"recipe": recipe}), resume=True)
    fit(solver, lambda n, generator: data.batch(n, generator)[0], build_schedule(recipe).alphas_cumprod(),
        torch.Generator().manual_seed(int(recipe["seed"])), device, recorder=recorder, log_every=checkpoint_every,
        checkpoint_path=Path(work_dir) / "last.pt", checkpoint_every=checkpoint_every, resume=True,
        desc="pre-training the MNIST eps-model")
    return solver.ema_model(), recorder.wall_clock()


def load(device: str | torch.device = "cpu") -> nn.Module:
    """The embedded pre-trained eps-model (eval mode); a missing or damaged file is one :class:`ConfigError`."""
    if not WEIGHTS.exists():
        raise ConfigError(f"the embedded MNIST eps-model {WEIGHTS} is missing; reinstall the package or train it with "
                          f"`make pretrain` (or use task.pretrained=train)")
    tensors, problem = checked_tensors(WEIGHTS)
    if problem is not None:
        raise ConfigError(f"the embedded MNIST eps-model {WEIGHTS} {problem}; restore it (git checkout) or train it "
                          f"again with `make pretrain`")
    network = build_network()  # the shipped recipe: a test checks that the card describes it
    network.load_state_dict(_as_float32(tensors))  # a float16 file loads as float32
    return network.to(device).eval()


def evaluate(network: nn.Module, data: ImageData, cache_dir: Path, num_samples: int = 1000,
             num_inference_steps: int = 50, noise_seed: int = 1234, recipe: dict[str, Any] = RECIPE,
             device: str = "cpu") -> dict[str, Any]:
    """The card's numbers: FID and KID (project CNN features) of ``num_samples`` DDIM samples against the held-out
    digits, the real-data floor at the same n (as many training digits against the held-out ones), and the fraction of
    samples (and of held-out digits) the CNN classifies with p > 0.9."""
    from bilevel_diffusion.evaluation import fixed_noise
    from bilevel_diffusion.metrics.classifier import load_or_train_classifier
    from bilevel_diffusion.metrics.image_quality import ImageQuality
    from bilevel_diffusion.sampling.ddim import ddim_sample, make_ddim_scheduler

    scheduler = make_ddim_scheduler(build_schedule(recipe).betas().detach())
    samples, _ = ddim_sample(network.to(device), scheduler, fixed_noise(num_samples, noise_seed), num_inference_steps,
                             batch_size=500, device=device)
    quality = ImageQuality(data.test_x, features="mnist_classifier", cache_dir=cache_dir, device=device)
    real = data.train_x[torch.randperm(data.train_x.shape[0], generator=torch.Generator().manual_seed(0))]
    classifier = load_or_train_classifier(cache_dir).eval()

    def confident(images: torch.Tensor) -> float:
        with torch.no_grad():
            return float((classifier(images).softmax(-1).amax(-1) > 0.9).float().mean())

    n_real = min(num_samples, real.shape[0])
    fid, floor = quality.fid_score(samples), quality.fid_score(real[:n_real])
    return {"num_samples": num_samples, "num_inference_steps": num_inference_steps, "noise_seed": noise_seed,
            "reference": f"{data.test_x.shape[0]} held-out digits", "features": quality.label,
            "fid": fid, "fid_floor": floor, "fid_floor_n": n_real, "fid_over_floor": fid / floor,
            "kid": quality.kid_score(samples), "kid_floor": quality.kid_score(real[:n_real]),
            "confident_fraction": confident(samples), "confident_fraction_heldout": confident(data.test_x),
            "samples": samples}
