"""The one exception type that means "the user asked for something wrong": run.py prints it as one line and exits 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad input (config value, missing file or folder, occupied run directory)."""


def find_config_error(err: BaseException) -> ConfigError | None:
    """The ConfigError behind ``err``, also when Hydra's instantiate wrapped it in its own exception."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ConfigError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
