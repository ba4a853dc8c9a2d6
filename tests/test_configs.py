"""Every config file composes, and the components it names can be built."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from conftest import CONFIGS, compose

GROUPS = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir())
OPTIONS = [(group, f.stem) for group in GROUPS for f in sorted((CONFIGS / group).glob("*.yaml"))]


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_config_file_composes(group: str, option: str) -> None:
    cfg = compose(f"{group}={option}")
    assert cfg.task.name
    assert cfg.upper_estimator.name


def test_groups_of_the_design_are_there() -> None:
    assert {"task", "lower_solver", "upper_estimator", "schedule", "hardware", "logger", "experiment"} <= set(GROUPS)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
def test_fixed_schedules_instantiate_with_a_valid_alpha_bar(schedule: str) -> None:
    sched = instantiate(compose(f"schedule={schedule}").schedule)
    abar = sched.alphas_cumprod()
    assert abar.shape == (1000,)
    assert bool((abar[1:] <= abar[:-1]).all()), "alpha_bar must not increase"
    assert 0.98 < float(abar[0]) <= 1.0 and float(abar[-1]) < 0.01, "schedule must end near pure noise"


def test_default_model_is_a_diffusers_unet_of_one_to_two_million_parameters() -> None:
    model = instantiate(compose().model)()
    assert type(model.unet).__name__ == "UNet2DModel"
    assert 1_000_000 <= model.num_parameters <= 2_000_000


def test_every_task_file_has_one_packaging_style() -> None:
    for path in sorted((CONFIGS / "task").glob("*.yaml")):
        text = path.read_text()
        assert text.startswith("# @package _global_\n") and "\ntask:\n" in text, path.name


def test_a_preset_that_matches_no_experiment_or_task_is_an_error(tmp_path) -> None:
    import shutil

    from bilevel_diffusion.errors import ConfigError
    from bilevel_diffusion.preflight import check_command_line

    check_command_line(["--help"], CONFIGS)  # the real presets all match
    shutil.copytree(CONFIGS, tmp_path / "configs")
    misspelt = tmp_path / "configs" / "task_preset" / "smoke" / "finetune_gausian.yaml"
    misspelt.write_text("task:\n  pool_samples: 8\n")
    with pytest.raises(ConfigError, match="finetune_gausian.yaml matches no run"):
        check_command_line(["task=finetune_gaussian"], tmp_path / "configs")
    misspelt.unlink()
    (tmp_path / "configs" / "task_preset" / "smok").mkdir()
    (tmp_path / "configs" / "task_preset" / "smok" / "finetune_mnist.yaml").write_text("task: {}\n")
    with pytest.raises(ConfigError, match="experiment='smok'"):
        check_command_line(["--help"], tmp_path / "configs")
    shutil.rmtree(tmp_path / "configs" / "task_preset" / "smok")
    (tmp_path / "configs" / "estimator_preset" / "noise_schedule_gmm" / "zeroth_ordr.yaml").write_text("task: {}\n")
    with pytest.raises(ConfigError, match="upper_estimator='zeroth_ordr'"):
        check_command_line(["--help"], tmp_path / "configs")


def test_an_estimator_preset_applies_to_its_task_and_estimator_only() -> None:
    preset = compose("task=noise_schedule_gmm")
    assert preset.upper_estimator.gamma == 100.0 and preset.upper_estimator.n_obj == 500
    assert compose("task=noise_schedule_mnist").upper_estimator.gamma == 1.0
    assert "n_obj" not in compose("task=noise_schedule_gmm", "upper_estimator=bayesian").upper_estimator
    assert compose("task=noise_schedule_gmm", "upper_estimator.gamma=3").upper_estimator.gamma == 3.0


def test_help_lists_every_task_estimator_solver_and_reward_and_no_internal_group() -> None:
    import subprocess
    import sys

    from conftest import ROOT

    text = subprocess.run([sys.executable, str(ROOT / "run.py"), "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120).stdout
    for group in ("task", "upper_estimator", "lower_solver", "reward", "schedule", "model", "experiment"):
        for option in sorted(p.stem for p in (CONFIGS / group).glob("*.yaml")):
            assert option in text, f"{group}={option} missing from --help"
    assert "task_preset" not in text and "hydra/launcher" not in text
