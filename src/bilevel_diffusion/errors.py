"""Errors that run.py reports as one line: bad input (exit 2) and numerical faults (exit 3)."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad input (config value, missing file or folder, occupied run directory)."""


class NumericalFault(RuntimeError):
    """NaN or Inf in a loss, gradient, reward or hyper-parameter; the message names the step and the quantity."""


def check_policy(policy: str, key: str) -> str:
    """``on_nonfinite`` settings are ``stop`` or ``skip``; ``key`` names the setting in the message."""
    if policy not in ("stop", "skip"):
        raise ConfigError(f"{key} must be stop or skip (got {policy!r})")
    return policy


def nonfinite(policy: str, quantity: str, where: str, key: str) -> None:
    """A NaN/Inf ``quantity`` at ``where``: raise :class:`NumericalFault` (``stop``), or return so that the caller
    skips it (``skip``); ``key`` names the switch."""
    if policy == "stop":
        raise NumericalFault(f"non-finite {quantity} at {where}; the last good checkpoint is kept "
                             f"({key}=skip skips it instead)")


def find_user_error(err: BaseException) -> ConfigError | NumericalFault | None:
    """The ConfigError or NumericalFault behind ``err``, also when Hydra's instantiate wrapped it."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, (ConfigError, NumericalFault)):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
