"""Atomic checkpoints and caches: write to a uniquely named temporary file in the same folder, then rename over the
target (concurrent writers, e.g. parallel test workers filling one cache, never see or make a half-written file)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from bilevel_diffusion.errors import ConfigError


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
    """Load a checkpoint written by :func:`save_checkpoint` (our own files, so full unpickling is safe); one that
    does not load is a :class:`ConfigError` that says what to do."""
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - truncated zip, pickle errors, ...
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"the checkpoint {path} cannot be read ({first}); it is damaged: start the run again in a "
                          f"new hydra.run.dir (or restore the file from a copy and resume)") from None


def load_loop(path: str | Path, theta: torch.Tensor, optimizer: torch.optim.Optimizer,
              schedule: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """Restore a one-parameter loop (the lambda loops of Scenario A) from its checkpoint: ``theta`` in place, the
    optimiser's and step-size schedule's states; returns the whole checkpoint for the loop's other fields."""
    state = load_checkpoint(path)
    with torch.no_grad():
        theta.copy_(state["theta"])
    optimizer.load_state_dict(state["optim"])
    schedule.load_state_dict(state["schedule"])
    return state


def write_json_atomic(obj: Any, path: str | Path) -> None:
    """JSON with sorted keys, written atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=float).encode()
    _atomic_write(Path(path), lambda handle: handle.write(text))


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str | Path,
                            metadata: dict[str, str] | None = None) -> None:
    """A safetensors file of ``tensors`` (made contiguous), written atomically."""
    data = safetensors_bytes({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    _atomic_write(Path(path), lambda handle: handle.write(data))


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors' names, dtypes, shapes and bytes (in name order)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_cached(tensors: dict[str, torch.Tensor], path: str | Path, card: dict[str, Any] | None = None) -> str:
    """A cache file: safetensors whose header carries the SHA-256 of its tensors (:func:`load_cached` checks it),
    and, with ``card``, a JSON card beside it that repeats the checksum. Returns the checksum."""
    digest = tensor_digest(tensors)
    save_safetensors_atomic(tensors, path, metadata={"sha256": digest})
    if card is not None:
        write_json_atomic({**card, "sha256": digest}, Path(path).with_suffix(".json"))
    return digest


def checked_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """(tensors, None) for a file written by :func:`save_cached` that passes its checksum, else (None, problem)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            expected = (handle.metadata() or {}).get("sha256")
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as err:  # noqa: BLE001 - truncated or garbage files
        return None, f"cannot be read ({type(err).__name__})"
    return (tensors, None) if expected == tensor_digest(tensors) else (None, "fails its checksum")


def load_cached(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The tensors of a cache file written by :func:`save_cached`, or None when it is missing, unreadable or fails
    its checksum (then it is deleted, with one line on stderr, and the caller builds it again)."""
    path = Path(path)
    if not path.exists():
        return None
    tensors, problem = checked_tensors(path)
    if problem is None:
        return tensors
    print(f"cache: {path} {problem}; building it again", file=sys.stderr)
    path.unlink(missing_ok=True)
    return None
