"""GPU check of the Stable Diffusion tasks: seconds per plain and per guided image and peak GPU memory for each
memory setting, with the full-size Stable Diffusion v1.5 architecture (and full-size CLIP ViT-L/14 for the
aesthetic reward) at 512x512 and random weights, so nothing is downloaded.

    python scripts/sd_device_check.py OUT.json [--steps 50] [--batch-sizes 1 4] [--dtype float16]
    python scripts/sd_device_check.py OUT.json --tiny DIR      # dry run on the tiny models (CPU is fine)

The random weights are written with ``save_pretrained`` / ``torch.save`` in the layout of ``model.path`` and read
back through the real loaders (``load_stable_diffusion``, the ``reward=aesthetic`` config). A plain image is one
50-step DDIM run with classifier-free guidance 7.5 (no gradient); a guided image adds, at every step, the reward
gradient through the VAE decoder and both UNet passes (paper Alg. 5). Memory settings: gradient checkpointing of
neither, the UNet, or the UNet and the VAE decoder; the images of one chunk (``lower_solver.batch_size``) are the
batch. The JSON is rewritten after every measurement, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "scripts")]

from make_tiny_sd import CLIP, write_weights  # noqa: E402

from bilevel_diffusion.lower_solvers.guided_sampling import GuidedSampler  # noqa: E402
from bilevel_diffusion.models.stable_diffusion import StableDiffusion, load_stable_diffusion  # noqa: E402

PROMPT = "horse standing on lush green grass"
SETTINGS = {"none": (False, False), "unet": (True, False), "unet+vae": (True, True)}


def write_full_size(out: Path, dtype: torch.dtype) -> None:
    """SD v1.5's UNet, VAE and text encoder, CLIP ViT-B/16 and ViT-L/14: their published shapes, random weights."""
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                                    block_out_channels=(320, 640, 1280, 1280),
                                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                                    cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=2, sample_size=512, scaling_factor=0.18215)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                            hidden_act="quick_gelu", projection_dim=768))
        clip_b16 = CLIP(512, 224, 12, 768, 16, 77, 49408, 512, 8, 12)
        clip_l14 = CLIP(768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12)
    write_weights(out, unet.to(dtype), vae.to(dtype), text.to(dtype), clip_b16, clip_l14)


def measure(fn: Callable[[], object], device: torch.device) -> dict[str, float | None]:
    """Wall-clock seconds of ``fn()`` and the peak GPU memory it allocated / reserved (GiB)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device.type != "cuda":
        return {"seconds": seconds, "peak_allocated_gib": None, "peak_reserved_gib": None}
    return {"seconds": seconds, "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30}


def set_checkpointing(sd: StableDiffusion, unet: bool, vae: bool) -> None:
    for module, on in ((sd.eps_model.unet, unet), (sd.vae, vae)):
        module.enable_gradient_checkpointing() if on else module.disable_gradient_checkpointing()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--tiny", type=Path, default=None, help="use these tiny weights (make_tiny_sd.py) instead")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    report: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
                    "torch": torch.__version__, "dtype": args.dtype if device.type == "cuda" else "float32",
                    "steps": args.steps, "guidance_scale": 7.5, "prompt": PROMPT, "runs": []}

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.tiny
        if weights is None:
            weights = Path(tmp) / "sd"
            report["write_weights_s"] = measure(lambda: write_full_size(weights, dtype), device)["seconds"]
        model = ["model=tiny"] if args.tiny else [f"model.weights_dir={weights}", "model.download=false"]
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose("config", ["task=finetune_aesthetic", *model, f"model.path={weights}",
                                     f"model.dtype={args.dtype}", f"lower_solver.num_steps={args.steps}"])
        start = time.perf_counter()
        sd = load_stable_diffusion(cfg.model, device)
        reward = instantiate(cfg.task.lower_reward).to(device).for_prompt(PROMPT)
        report["load_s"] = time.perf_counter() - start
        report["image_size"] = [int(cfg.model.height), int(cfg.model.width)]
        eps = sd.eps_for(PROMPT)
        for batch in args.batch_sizes:
            sampler: GuidedSampler = instantiate(cfg.lower_solver, clip_sample=False, batch_size=batch)
            noise = torch.randn(batch, *sd.latent_shape, generator=torch.Generator().manual_seed(0))

            def run(guided: bool) -> object:
                return sampler.sample(eps, sd.betas, noise, reward if guided else None, 1.0 if guided else None,
                                      decode=sd.decode, nfe_per_sample=sd.nfe_per_sample, device=device)

            if batch == args.batch_sizes[0]:
                warm = instantiate(cfg.lower_solver, clip_sample=False, batch_size=batch, num_steps=2)
                warm.sample(eps, sd.betas, noise, reward, 1.0, decode=sd.decode, device=device)
            plan = [("plain", "none")] + [("guided", name) for name in SETTINGS]
            for kind, setting in plan:
                set_checkpointing(sd, *SETTINGS[setting])
                row = {"kind": kind, "checkpointing": setting, "batch_size": batch}
                try:
                    result = measure(lambda: run(kind == "guided"), device)
                    row.update(result, seconds_per_image=result["seconds"] / batch)
                except torch.cuda.OutOfMemoryError:
                    row["error"] = "out of memory"
                report["runs"].append(row)
                save()
                print(json.dumps(row), flush=True)
    save()


if __name__ == "__main__":
    main()
