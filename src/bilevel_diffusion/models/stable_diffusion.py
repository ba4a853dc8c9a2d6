"""Stable Diffusion v1.5 as the pre-trained model of Scenario A at paper scale (paper Sec. 3.1).

The components (UNet, VAE, CLIP text encoder, tokenizer, training betas) load through diffusers / transformers from
``model.path`` (a local folder with ``unet/ vae/ text_encoder/ tokenizer/ scheduler/``) or, when that is null, from
the hub id ``model.source`` with the usual Hugging Face cache behaviour (``HF_HUB_OFFLINE=1``: cache only). Weights
are ``model.dtype`` on a GPU (float16 by default) and always float32 on the CPU.

For the guided sampler (Alg. 5) the model provides, per prompt, the eps-model on latents with classifier-free
guidance (:meth:`StableDiffusion.eps_for`) and the ``decode`` hook (Tweedie latent -> VAE decoder -> image in
[-1, 1]), through which the reward gradient flows back to the latents. Memory options: gradient checkpointing of the
UNet and of the VAE decoder (``model.gradient_checkpointing.*``); batch chunking is ``lower_solver.batch_size``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from omegaconf import DictConfig
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from bilevel_diffusion.errors import ConfigError


class ClassifierFreeGuidance(nn.Module):
    """eps = eps(x, t, null) + scale * (eps(x, t, cond) - eps(x, t, null)) for a conditional ``model(x, t, c)``.

    Both branches run as one batch of ``2B``, so each call costs ``2B`` network evaluations (``nfe_per_sample``).
    """

    nfe_per_sample = 2

    def __init__(self, model: nn.Module, cond: torch.Tensor, null_cond: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, float(scale)
        self.register_buffer("cond", cond)
        self.register_buffer("null_cond", null_cond)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        conds = torch.cat([self.null_cond.expand(batch, *self.null_cond.shape[1:]),
                           self.cond.expand(batch, *self.cond.shape[1:])])
        eps_null, eps_cond = self.model(torch.cat([x, x]), torch.cat([t, t]), conds).chunk(2)
        return eps_null + self.scale * (eps_cond - eps_null)


class TextConditionedEps(nn.Module):
    """``eps_theta(z_t, t, c)``: the UNet in its own dtype, float32 latents in and out."""

    def __init__(self, unet: UNet2DConditionModel) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        dtype = self.unet.dtype
        return self.unet(x.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample.float()


class _Conditioned(nn.Module):
    """The conditional branch alone (``guidance_scale <= 1``: no classifier-free guidance)."""

    nfe_per_sample = 1

    def __init__(self, model: TextConditionedEps, cond: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("cond", cond)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t, self.cond.expand(x.shape[0], *self.cond.shape[1:]))


class StableDiffusion:
    """The frozen text-to-image latent diffusion model and what the guided sampler needs from it."""

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel,
                 tokenizer: CLIPTokenizer, betas: torch.Tensor, height: int, width: int,
                 guidance_scale: float) -> None:
        self.vae, self.text_encoder, self.tokenizer, self.betas = vae, text_encoder, tokenizer, betas
        self.eps_model = TextConditionedEps(unet)
        self.guidance_scale = float(guidance_scale)
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        multiple = factor * 2 ** (len(unet.config.block_out_channels) - 1)
        if height % multiple or width % multiple:
            raise ConfigError(f"model.height and model.width must be multiples of {multiple} (got {height}x{width})")
        self.latent_shape = (int(unet.config.in_channels), height // factor, width // factor)
        self.nfe_per_sample = 2 if self.guidance_scale > 1 else 1
        self._eps_cache: dict[str, nn.Module] = {}

    @property
    def device(self) -> torch.device:
        return self.eps_model.unet.device

    @torch.no_grad()
    def encode_text(self, prompt: str) -> torch.Tensor:
        """CLIP text-encoder hidden states of one prompt, ``[1, 77, D]`` (padded to the tokenizer's length)."""
        tokens = self.tokenizer([prompt], padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(tokens)[0]

    def eps_for(self, prompt: str) -> nn.Module:
        """The prompt's eps-model on latents, with classifier-free guidance when ``guidance_scale > 1``."""
        if prompt not in self._eps_cache:
            cond = self.encode_text(prompt)
            self._eps_cache[prompt] = (ClassifierFreeGuidance(self.eps_model, cond, self.encode_text(""),
                                                              self.guidance_scale)
                                       if self.guidance_scale > 1 else _Conditioned(self.eps_model, cond))
        return self._eps_cache[prompt]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (a Tweedie estimate or a final sample) -> images in about [-1, 1], float32, differentiable."""
        latents = latents.to(self.device, self.vae.dtype) / self.vae.config.scaling_factor
        return self.vae.decode(latents).sample.float()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"


def load_stable_diffusion(model: DictConfig, device: torch.device) -> StableDiffusion:
    """Load the components named by the ``model`` config group (``model=stable_diffusion`` or ``model=tiny``).

    Keys: ``source`` (hub id), ``path`` (local folder; wins over ``source``), ``revision``, ``variant`` (e.g.
    ``fp16`` weight files), ``dtype`` (on a GPU), ``height``, ``width``, ``guidance_scale``,
    ``gradient_checkpointing.{unet,vae}`` and ``hint`` (how to provide the weights, printed when they are missing).
    """
    where = str(model.path) if model.get("path") else str(model.source)
    if model.get("path") and not Path(where).is_dir():
        raise ConfigError(f"model.path={where} is not a folder; {model.hint}")
    options: dict[str, Any] = {"revision": model.get("revision"), "variant": model.get("variant")}
    if str(model.dtype) not in ("float16", "bfloat16", "float32"):
        raise ConfigError(f"model.dtype must be float16, bfloat16 or float32 (got {model.dtype!r})")
    dtype = getattr(torch, str(model.dtype)) if device.type == "cuda" else torch.float32
    try:
        unet = UNet2DConditionModel.from_pretrained(where, subfolder="unet", torch_dtype=dtype, **options)
        vae = AutoencoderKL.from_pretrained(where, subfolder="vae", torch_dtype=dtype, **options)
        text_encoder = CLIPTextModel.from_pretrained(where, subfolder="text_encoder", dtype=dtype, **options)
        tokenizer = CLIPTokenizer.from_pretrained(where, subfolder="tokenizer", revision=options["revision"])
        scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(where, subfolder="scheduler",
                                                                        revision=options["revision"]))
    except (OSError, ValueError) as err:
        raise ConfigError(f"Stable Diffusion weights for {where!r} could not be loaded ({_first_line(err)}); "
                          f"{model.hint}") from err
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False).eval().to(device)
    if model.gradient_checkpointing.unet:
        unet.enable_gradient_checkpointing()
    if model.gradient_checkpointing.vae:
        vae.enable_gradient_checkpointing()
    return StableDiffusion(unet, vae, text_encoder, tokenizer, scheduler.betas.double(), int(model.height),
                           int(model.width), float(model.guidance_scale))
