"""Data parallelism over ``torchrun`` processes (``hardware=ddp``); every helper is the identity in one process.

- Training: every rank draws the *global* batch (and its t and eps) from the same seeded generator and computes
  the loss on its contiguous shard, weighted by the shard's share of the batch; :func:`sum_gradients` then adds the
  ranks' gradients, so each step is the single-process step on the same global batch (up to float rounding).
  The penalty step of Scenario B (theta_z and the schedule) does the same with :func:`sum_tensors`.
- Sampling: each rank samples its shard of the initial noise and :func:`gather` reassembles the samples in order,
  so rewards, features and metrics are computed from the same full set on every rank.
- Files: only rank 0 writes the run directory and W&B; the other ranks write into a scratch folder (see
  ``main.run_job``) and share the checkpoints (written atomically, so concurrent identical writes are safe);
  shared caches are filled by rank 0 first (:func:`main_first`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from bilevel_diffusion.errors import ConfigError


def active() -> bool:
    """True inside a ``hardware=ddp`` job (a process group is up)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init(device_name: str) -> torch.device:
    """Join the torchrun process group (nccl on CUDA, gloo on the CPU); returns this rank's device."""
    if "LOCAL_RANK" not in os.environ:
        raise ConfigError("hardware=ddp runs under torchrun: torchrun --nproc_per_node=N run.py task=... "
                          "hardware=ddp (or use hardware=auto for one process)")
    use_cuda = device_name in ("cuda", "auto") and torch.cuda.is_available()
    if device_name == "cuda" and not use_cuda:
        raise ConfigError("hardware.device=cuda but torch sees no GPU; use hardware.device=cpu (gloo)")
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not active():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return device


def close() -> None:
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. fills a cache), the other ranks after it (and find the cache filled)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shard(x: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous part of ``x`` along dim 0 (sizes differ by at most one)."""
    return torch.tensor_split(x, world_size())[rank()] if active() else x


def gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` (its :func:`shard`'s result) concatenated in rank order, on every rank (CPU)."""
    if not active():
        return x
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, x.detach().cpu())
    return torch.cat(parts)


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Add up the ranks' gradients in place (their losses are already weighted by the shard sizes)."""
    sum_tensors([p.grad for p in params if p.grad is not None])


def sum_tensors(tensors: Iterable[torch.Tensor]) -> None:
    """Replace each tensor by its sum over the ranks, in place.

    One ``all_reduce`` per dtype and device over the flattened tensors (a bucket, as torch DDP does), not one per
    tensor: a UNet has hundreds of small parameters and each collective has a fixed latency.
    """
    if not active():
        return
    buckets: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for tensor in tensors:
        buckets.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    for group in buckets.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        for tensor, summed in zip(group, flat.split([t.numel() for t in group])):
            tensor.copy_(summed.view_as(tensor))


def sum_scalar(value: torch.Tensor | float | int, device: torch.device | None = None) -> float:
    """The sum of a scalar over the ranks."""
    if not active():
        return float(value)
    tensor = torch.as_tensor(value, dtype=torch.float64, device=device).detach().clone()
    dist.all_reduce(tensor)
    return float(tensor)
