"""Hardware selection, seeding and the per-job context handed to every task."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from bilevel_diffusion import distributed
from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.tracking.recorder import Recorder

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: torch's thread count when the process started (OMP_NUM_THREADS or the cores): a job without hardware.num_threads
#: gets it back after a job with one ran in the same process
_DEFAULT_THREADS = torch.get_num_threads()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(hardware: DictConfig) -> tuple[torch.device, torch.dtype]:
    """``hardware.device`` is ``cpu``, ``cuda`` (or ``cuda:N``) or ``auto``; ``hardware.dtype`` names the dtype.

    ``hardware.distributed=true`` (``hardware=ddp``) joins the torchrun process group; each rank gets its device.
    """
    name = str(hardware.device)
    if hardware.get("distributed", False):
        name = str(distributed.init(name))
    elif name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("hardware=gpu asks for CUDA but torch sees no GPU; use hardware=cpu or hardware=auto")
    dtype_name = str(hardware.dtype)
    if dtype_name not in _DTYPES:
        raise ConfigError(f"hardware.dtype must be one of {sorted(_DTYPES)} (got {dtype_name!r})")
    device = torch.device(name)
    dtype = _DTYPES[dtype_name] if device.type == "cuda" else torch.float32
    deterministic = bool(hardware.get("deterministic", False))  # set both ways: jobs may share a process (multirun)
    torch.use_deterministic_algorithms(deterministic, warn_only=deterministic)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(int(hardware.get("num_threads") or _DEFAULT_THREADS))
    return device, dtype


@dataclass
class RunContext:
    """What a task needs from the job around it."""

    run_dir: Path
    cache_dir: Path
    device: torch.device
    dtype: torch.dtype
    seed: int
    resume: bool
    recorder: Recorder
    shared_dir: Path | None = None  # the job's run directory when ``run_dir`` is a DDP rank's scratch folder

    @property
    def checkpoint_path(self) -> Path:
        """``checkpoints/last.pt`` of the job's run directory (shared by every DDP rank)."""
        return (self.shared_dir or self.run_dir) / "checkpoints" / "last.pt"
