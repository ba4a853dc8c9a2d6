"""Cluster launchers: SLURM config composes; submitit_local fans a sweep out to worker processes."""

from __future__ import annotations

import pytest

from conftest import CONFIGS, assert_run_contract, run_cli


def test_slurm_launcher_config_composes_with_partition_gpus_and_time() -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["hydra/launcher=slurm", "hydra.launcher.partition=a100", "hydra.launcher.timeout_min=60"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("a100", 1, 60)


@pytest.mark.slow
def test_submitit_local_sweep_runs_every_job(tmp_path, smoke_args) -> None:
    result = run_cli("-m", "hydra/launcher=submitit_local", "task=train_mnist", *smoke_args, "seed=0,1",
                     f"hydra.sweep.dir={tmp_path}", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    for job in ("0", "1"):
        assert assert_run_contract(tmp_path / job, "train_mnist", "fixed")["seed"] == int(job)
