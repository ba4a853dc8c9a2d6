"""Entry point: ``python run.py task=T [group=option ...] [key=value ...]`` (``-m`` for sweeps)."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("BILEVEL_ROOT", str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from bilevel_diffusion.errors import ConfigError, find_user_error  # noqa: E402
from bilevel_diffusion.main import run_job  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        return run_job(cfg)
    except Exception as err:  # bad input (exit 2) or a NaN/Inf (exit 3): one line, possibly wrapped by instantiate
        user_error = find_user_error(err)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2 if isinstance(user_error, ConfigError) else 3)


if __name__ == "__main__":
    main()
