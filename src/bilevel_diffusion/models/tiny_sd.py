"""Random-weight miniatures of every network of the Stable Diffusion tasks, for tests, CI and trying the SD tasks
on a CPU (no download). ``model=tiny`` builds them on first use (about 10 s) through the ``tiny_sd`` config resolver
(:func:`ensure`); ``python scripts/make_tiny_sd.py [OUT_DIR]`` writes them explicitly.

OUT_DIR gets the layout the real loaders read (``model=tiny`` points ``model.path`` and ``model.weights_dir``
at it): ``unet/ vae/ text_encoder/ tokenizer/ scheduler/`` (diffusers / transformers ``save_pretrained``; the
tokenizer is the real CLIP BPE vocabulary shipped with clip-anytorch), ``clip/ViT-B-16.pt`` and
``clip/ViT-L-14.pt`` (tiny clip-anytorch state dicts), ``sac+logos+ava1-l14-linearMSE.pth`` (aesthetic MLP for
the tiny CLIP's embedding) and ``resnet18-f37072fd.pth`` (a random ResNet-18). Seeded: the same files every time.
"""

from __future__ import annotations

import gzip
import os
import shutil
import warnings
from pathlib import Path

import torch
import torchvision
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from bilevel_diffusion.rewards.aesthetic import AestheticMLP

with warnings.catch_warnings():  # clip-anytorch imports pkg_resources
    warnings.simplefilter("ignore")
    from clip import simple_tokenizer
    from clip import tokenize as clip_tokenize
    from clip.model import CLIP

TEXT_DIM = 32
CLIP_DIM = 32


def clip_tokenizer() -> CLIPTokenizer:
    """A CLIPTokenizer built offline from clip-anytorch's BPE merges (the vocabulary of SD's text encoder)."""
    merges = gzip.open(simple_tokenizer.default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in merges]
    byte_chars = list(simple_tokenizer.bytes_to_unicode().values())
    words = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    words += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={w: i for i, w in enumerate(words)}, merges=merges, model_max_length=77)


def tiny_pipeline() -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """UNet2DConditionModel, AutoencoderKL (3 levels: latents are 1/4 of the image) and CLIPTextModel."""
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=TEXT_DIM,
                                attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16, 16), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=1, norm_num_groups=4, sample_size=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=TEXT_DIM, intermediate_size=64, num_attention_heads=4,
                                                num_hidden_layers=2, vocab_size=49408, max_position_embeddings=77,
                                                projection_dim=TEXT_DIM, bos_token_id=49406, eos_token_id=49407,
                                                pad_token_id=49407))
    return unet, vae, text_encoder


def write_weights(out: Path, unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel,
                  clip_b16: CLIP, clip_l14: CLIP) -> None:
    """Save the networks in the layout the loaders read (see the module docstring); the aesthetic MLP is random
    for ``clip_l14``'s embedding width, the ResNet-18 random; SD v1.5's training betas (PNDM config)."""
    unet.save_pretrained(out / "unet")
    vae.save_pretrained(out / "vae")
    text_encoder.save_pretrained(out / "text_encoder")
    clip_tokenizer().save_pretrained(out / "tokenizer")
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                  skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False).save_pretrained(out / "scheduler")
    (out / "clip").mkdir(parents=True, exist_ok=True)
    torch.save(clip_b16.state_dict(), out / "clip" / "ViT-B-16.pt")
    torch.save(clip_l14.state_dict(), out / "clip" / "ViT-L-14.pt")
    torch.save(AestheticMLP(clip_l14.visual.output_dim).state_dict(), out / "sac+logos+ava1-l14-linearMSE.pth")
    torch.save(torchvision.models.resnet18().state_dict(), out / "resnet18-f37072fd.pth")


def tiny_clip() -> CLIP:
    """A clip-anytorch ViT (32 px input, patch 8) with the real context length and vocabulary size.

    Random embeddings of images and of a prompt share one sign of cosine; the text projection is flipped when it is
    negative, else the CLIP score 100 * max(cos, 0) would be 0 for every image and the tiny runs would test nothing.
    """
    model = CLIP(embed_dim=CLIP_DIM, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
                 context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=2)
    with torch.no_grad():
        images = model.encode_image(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
        text = model.encode_text(clip_tokenize(["fox", "horse"]))
        if float((images @ text.T).mean()) < 0:
            model.text_projection.neg_()
    return model


def build(out: Path) -> Path:
    """Write every tiny network into ``out`` (seeded: the same files every time), atomically (a temporary folder
    renamed into place, so concurrent jobs never read half a model)."""
    out = Path(out)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        write_weights(tmp, *tiny_pipeline(), tiny_clip(), tiny_clip())
    if (out / "unet").exists():  # another job finished first
        shutil.rmtree(tmp)
        return out
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out


def ensure(path: str) -> str:
    """``path`` holding the tiny models: built there first when it does not yet (the ``tiny_sd`` resolver)."""
    if not (Path(path) / "unet").exists():
        print(f"model=tiny: building the tiny random-weight models in {path} (once, about 10 s)", flush=True)
        build(Path(path))
    return path
