"""The run contract (docs/usage.md): ``config.yaml``, ``metrics.jsonl``, ``summary.json`` and PNG files in the run
directory, mirrored to Weights & Biases when ``logger=wandb``."""

from __future__ import annotations

import json
import math
import secrets
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import save_image

from bilevel_diffusion.checkpoint import write_json_atomic
from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.tracking.credentials import wandb_credentials_found

CONTRACT_FILES = ("config.yaml", "metrics.jsonl", "summary.json")


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


class Recorder:
    """Writes one job's metrics and results; one W&B run per job, finished by :meth:`close`."""

    def __init__(self, run_dir: str | Path, cfg: DictConfig, logger: DictConfig | None = None,
                 job_name: str = "run", group: str | None = None, resume: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        # on resume, the lines of the stopped attempt stay until a loop restores its checkpoint (resume_from keeps
        # what that checkpoint had seen); with no checkpoint, the first new line starts the file afresh
        self._previous = self.metrics_path.read_text().splitlines() if resume and self.metrics_path.exists() else []
        self._cut_pending = bool(self._previous)
        self.lines = 0  # lines in metrics.jsonl written by this run (the count a checkpoint stores)
        self.elapsed_before = 0.0
        self._step = 0  # the last logged step: W&B drops a row whose step is below one it has seen
        self._t0 = time.perf_counter()
        (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        self._wandb = None
        if logger is not None and logger.get("backend", "none") == "wandb":
            self._wandb = self._start_wandb(cfg, logger, job_name, logger.get("group") or group)

    def _start_wandb(self, cfg: DictConfig, logger: DictConfig, job_name: str, group: str | None):
        import wandb

        id_file = self.run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id)

        def start(mode: str):
            return wandb.init(project=logger.project, entity=logger.get("entity"), mode=mode,
                              dir=str(self.run_dir), name=job_name, id=run_id, resume="allow",
                              tags=list(logger.get("tags") or []), group=group,
                              config=OmegaConf.to_container(cfg, resolve=True), reinit="create_new",
                              settings=wandb.Settings(init_timeout=float(logger.get("init_timeout", 30))))
        if logger.mode == "online" and not wandb_credentials_found():  # logger.fallback_offline=true (preflight)
            print("W&B: no credentials; logging offline (logger.fallback_offline=true)")
            return start("offline")
        try:
            return start(str(logger.mode))
        except Exception as err:  # noqa: BLE001 - wandb raises several types for "no network" / "bad key"
            if logger.mode != "online" or not logger.get("fallback_offline"):
                raise ConfigError(f"W&B could not start an online run ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else ''}); use logger.mode=offline or "
                                  f"logger.fallback_offline=true") from None
            print(f"W&B: online start failed ({type(err).__name__}); logging offline (logger.fallback_offline=true)")
            return start("offline")

    # -- time -------------------------------------------------------------------------------------------
    def wall_clock(self) -> float:
        """Seconds spent on this job, including time before a resume."""
        return self.elapsed_before + time.perf_counter() - self._t0

    def checkpoint_fields(self) -> dict[str, Any]:
        """What a checkpoint stores about the log: the wall clock so far and the number of lines written."""
        return {"wall_clock_s": self.wall_clock(), "metrics_lines": self.lines}

    def resume_from(self, step: int, wall_clock_s: float, lines: int | None = None) -> None:
        """Continue after a checkpoint: keep the first ``lines`` log lines (the ones the checkpoint had seen; without
        ``lines``, those with a step <= ``step``) and drop the rest, which will be logged again."""
        self.elapsed_before = wall_clock_s
        self._t0 = time.perf_counter()
        previous = self._previous
        kept = (previous[:lines] if lines is not None
                else [line for line in previous if line and json.loads(line)["step"] <= step])
        self.metrics_path.write_text("".join(line + "\n" for line in kept))
        self.lines, self._cut_pending = len(kept), False
        self._step = max([json.loads(line)["step"] for line in kept] or [0])

    def restore(self, state: dict[str, Any], step: int) -> None:
        """:meth:`resume_from` with the fields of :meth:`checkpoint_fields` saved in a checkpoint."""
        self.resume_from(step, float(state["wall_clock_s"]), state.get("metrics_lines"))

    # -- logging ----------------------------------------------------------------------------------------
    def log(self, step: int, **metrics: Any) -> dict[str, Any]:
        """Append one line ``{"step", "wall_clock_s", **metrics}`` to ``metrics.jsonl`` (and to W&B)."""
        row = {"step": int(step), "wall_clock_s": round(self.wall_clock(), 3)}
        row.update({k: _plain(v) for k, v in metrics.items()})
        if self._cut_pending:  # resumed, but no loop had a checkpoint to restore: the run starts over
            self.metrics_path.write_text("")
            self._cut_pending = False
        self.lines += 1
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(row, allow_nan=True) + "\n")
        self._step = max(self._step, int(step))
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=int(step))
        return row

    def save_images(self, name: str, images: torch.Tensor, nrow: int | None = None) -> Path:
        """Save a grid of images in [-1, 1] as ``name.png`` in the run directory."""
        path = self.run_dir / f"{name}.png"
        nrow = nrow or max(1, int(math.sqrt(images.shape[0])))
        save_image((images.float().cpu() + 1) / 2, path, nrow=nrow, padding=1, value_range=(0, 1))
        self.log_file_image(name, path)
        return path

    def log_file_image(self, name: str, path: Path) -> None:
        """Send an already written PNG (a plot, a grid) to W&B, at the last logged step (an image without a step would
        advance W&B's step counter, and W&B would then drop the next row logged at the current step)."""
        if self._wandb is not None:
            import wandb

            self._wandb.log({name: wandb.Image(str(path))}, step=self._step)

    def write_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """``summary.json``: the job's final result (docs/usage.md, the run contract)."""
        summary = {k: _plain(v) for k, v in summary.items()}
        write_json_atomic(summary, self.run_dir / "summary.json")
        if self._wandb is not None:
            self._wandb.summary.update({k: v for k, v in summary.items() if not isinstance(v, dict)})
        return summary

    def close(self, exit_code: int = 0) -> None:
        if self._wandb is not None:
            self._wandb.finish(exit_code=exit_code)
            self._wandb = None
