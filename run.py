"""Entry point: ``python run.py task=T [group=option ...] [key=value ...]`` (``-m`` for sweeps)."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("BILEVEL_ROOT", str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bilevel_diffusion import stopping  # noqa: E402
from bilevel_diffusion.errors import ConfigError, find_user_error  # noqa: E402
from bilevel_diffusion.preflight import check_command_line  # noqa: E402


def fail(user_error: Exception) -> None:
    """One line on stderr; exit 2 for bad input, 3 for a numerical fault."""
    print(f"error: {user_error}", file=sys.stderr)
    sys.exit(2 if isinstance(user_error, ConfigError) else 3)


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float:
    from bilevel_diffusion.main import run_job  # heavy (torch, diffusers): after the cheap checks

    try:
        with stopping.handling_signals():  # SIGINT / SIGTERM: checkpoint at the next safe point, one line, 130 / 143
            return run_job(cfg, ROOT / "configs")
    except stopping.Stopped as stop:
        print(f"{stop}; resume=true continues the run", file=sys.stderr)
        sys.exit(128 + stop.signum)
    except KeyboardInterrupt:
        print("stopped at once by a second signal; the last checkpoint is kept (resume=true continues the run)",
              file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # bad input or a NaN/Inf, possibly wrapped by instantiate
        user_error = find_user_error(err)
        if user_error is None:
            raise
        fail(user_error)


def cli() -> None:
    """Cheap checks of the command line (options, keys, values, the run directory), then the Hydra job."""
    try:
        check_command_line(sys.argv[1:], ROOT / "configs")
    except ConfigError as err:
        fail(err)
    main()


if __name__ == "__main__":
    cli()
