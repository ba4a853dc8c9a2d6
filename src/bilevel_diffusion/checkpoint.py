"""Atomic checkpoints and caches: write to a uniquely named temporary file in the same folder, then rename over the
target (concurrent writers, e.g. parallel test workers filling one cache, never see or make a half-written file)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """torch.save ``state`` to ``path`` atomically: a reader sees the old file or the new one, never half of one."""
    _atomic_write(Path(path), lambda handle: torch.save(state, handle))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (our own files, so full unpickling is safe)."""
    return torch.load(Path(path), map_location="cpu", weights_only=False)


def write_json_atomic(obj: Any, path: str | Path) -> None:
    """JSON with sorted keys, written atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=float).encode()
    _atomic_write(Path(path), lambda handle: handle.write(text))


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str | Path,
                            metadata: dict[str, str] | None = None) -> None:
    """A safetensors file of ``tensors`` (made contiguous), written atomically."""
    data = safetensors_bytes({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    _atomic_write(Path(path), lambda handle: handle.write(data))
