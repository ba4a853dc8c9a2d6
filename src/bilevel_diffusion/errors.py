"""The one exception type that means "the user asked for something wrong": run.py prints it as one line and exits 2."""


class ConfigError(ValueError):
    """Bad input (config value, missing file or folder, occupied run directory)."""
