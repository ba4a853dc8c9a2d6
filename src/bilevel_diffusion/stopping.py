"""Stops that keep work (``docs/reliability.md``): SIGINT or SIGTERM (a SLURM preemption) asks the running loop to
write its checkpoint at the next safe point (the end of a training step, a lambda step, an outer step of Alg. 6,
a search trial) and to end the job with :class:`Stopped`; ``run.py`` then prints one line and exits 130 / 143.
A second signal stops at once (the last checkpoint is kept)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

from bilevel_diffusion import distributed

_requested: int | None = None


class Stopped(Exception):
    """The job stopped on a signal at a safe point; ``resume=true`` continues it."""

    def __init__(self, signum: int, where: str) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} {where}")
        self.signum = signum


def _handler(signum: int, frame) -> None:
    global _requested
    if _requested is not None:  # the second signal: stop now
        raise KeyboardInterrupt
    _requested = signum


@contextmanager
def handling_signals() -> Iterator[None]:
    """Catch SIGINT and SIGTERM inside the block (main thread only); the previous handlers come back after it."""
    global _requested
    _requested = None
    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _requested = None


def requested() -> bool:
    """True once a stop was asked for (on any DDP rank: the ranks agree, so they stop at the same step)."""
    if distributed.active():
        return distributed.sum_scalar(float(_requested is not None)) > 0
    return _requested is not None


def raise_if_requested(where: str) -> None:
    """Raise :class:`Stopped` if a stop was asked for; call where the state is saved (or need not be)."""
    if requested():
        raise Stopped(_requested or signal.SIGTERM, where)


def raise_in_one_process(where: str) -> None:
    """:func:`raise_if_requested` inside loops whose length may differ between DDP ranks (sampling a shard): only
    outside ``hardware=ddp``, where no other rank waits in a collective."""
    if not distributed.active() and _requested is not None:
        raise Stopped(_requested, where)
