"""Shared helpers: compose the real configs, and run ``run.py`` in a subprocess like a user would."""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
os.environ.setdefault("BILEVEL_ROOT", str(ROOT))
sys.path.insert(0, str(ROOT / "src"))


def compose(*overrides: str):
    """The real config, composed with ``overrides`` (Hydra's compose API, config.yaml as the root)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import bilevel_diffusion  # noqa: F401  (registers the config resolvers, as run.py does)

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=False)


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` from the repository root (the classifier cache is shared across tests)."""
    env = {**os.environ, "BILEVEL_ROOT": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def run_in_process(*args: str) -> tuple[int, str]:
    """``python run.py ARGS`` in this process (same code path, the heavy imports paid once; faults can be injected
    with ``monkeypatch``); returns (exit status, stderr)."""
    from bilevel_diffusion.reproduce import run_in_process as run_here

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = run_here(args)
    return code, stderr.getvalue()


def wandb_records(path: Path) -> list:
    """The records of an offline W&B run file (``run-<id>.wandb``): a LevelDB-style log (7-byte file header, 32 KiB
    blocks, each record a 7-byte header of crc32, length and type, then a protobuf ``Record``)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, parts, payloads = Path(path).read_bytes(), 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if left < 7 or kind == 0:  # block trailer or padding
            pos += left
            continue
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # full, last
            payloads.append(parts + payload if kind == 4 else payload)
        parts = payload if kind == 2 else parts + payload if kind == 3 else b""
    return [wandb_internal_pb2.Record.FromString(payload) for payload in payloads]


def wandb_history(path: Path) -> dict[int, dict[str, str]]:
    """``{step: {key: value as JSON text}}`` of the history rows W&B kept for an offline run."""
    rows: dict[int, dict[str, str]] = {}
    for record in wandb_records(path):
        if record.HasField("history"):
            items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            rows.setdefault(int(record.history.step.num), {}).update(items)
    return rows


def kill_after_lines(args: list[str], run_dir: Path, lines: int, sig: int = signal.SIGKILL,
                     timeout: float = 300) -> int | None:
    """``run.py ARGS hydra.run.dir=RUN_DIR`` in a child process, sent ``sig`` once its ``metrics.jsonl`` has
    ``lines`` lines (``0``: as soon as the run directory has its fingerprint, before any line); returns the exit
    code. A process, not a fork of pytest: a fork of a process whose OpenMP pool has run hangs in the child."""
    child = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "BILEVEL_ROOT": str(ROOT), "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + timeout
    metrics, started = run_dir / "metrics.jsonl", run_dir / "fingerprint.json"
    while child.poll() is None and time.monotonic() < deadline:
        done = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        if started.exists() and done >= lines:
            child.send_signal(sig)
            break
        time.sleep(0.01)
    return child.wait(timeout=120)


#: summary.json / metrics.jsonl keys that measure time, not results
TIMING_KEYS = ("wall_clock_s",)


def results(run_dir: Path) -> tuple[list[dict], dict]:
    """metrics.jsonl rows and summary.json without timing keys (what a stopped-and-resumed run must reproduce)."""
    strip = lambda d: {k: v for k, v in d.items() if k not in TIMING_KEYS}  # noqa: E731
    return ([strip(row) for row in read_jsonl(run_dir / "metrics.jsonl")],
            strip(json.loads((run_dir / "summary.json").read_text())))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def assert_run_contract(run_dir: Path, task: str, method: str) -> dict:
    """Every file of the run contract (README) is there and well-formed; returns summary.json."""
    from omegaconf import OmegaConf

    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (run_dir / name).is_file(), f"{name} missing in {run_dir}"
    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert cfg.task.name == task
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows and all({"step", "wall_clock_s"} <= set(row) for row in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("task", "method", "seed", "objective", "wall_clock_s", "sampler_nfe"):
        assert key in summary, f"summary.json lacks {key}"
    assert summary["task"] == task and summary["method"] == method
    assert list(run_dir.glob("*.png")), "no PNG written"
    return summary


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """Tiny random-weight Stable Diffusion and reward models (``scripts/make_tiny_sd.py``), for ``model=tiny``."""
    out = tmp_path_factory.mktemp("weights") / "tiny_sd"
    argv = sys.argv
    sys.argv = ["make_tiny_sd.py", str(out)]
    try:
        runpy.run_path(str(ROOT / "scripts" / "make_tiny_sd.py"), run_name="__main__")
    finally:
        sys.argv = argv
    return out


@pytest.fixture
def smoke_args():
    return ["experiment=smoke", "hardware=cpu", "logger=none"]


#: test files that take minutes: collected first, so that ``-n 2 --dist loadfile`` starts them at once on one worker
#: while the other works through the rest (started last, they would finish alone)
HEAVY_FILES = ("test_reproduce.py",)


def pytest_collection_modifyitems(config, items) -> None:
    items.sort(key=lambda item: item.path.name not in HEAVY_FILES)  # stable: the order within each part is kept
