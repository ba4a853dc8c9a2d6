"""Scenario A at paper scale without downloads: tiny random-weight Stable Diffusion and reward models written by
``scripts/make_tiny_sd.py`` and read back through the real loading code (``model=tiny``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import save_file

from conftest import assert_run_contract, compose, run_cli

PROMPT = "horse standing on lush green grass"


def _cfg(tiny_dir, *overrides: str):
    return compose("task=finetune_aesthetic", "model=tiny", f"model.path={tiny_dir}", *overrides)


def _reward(tiny_dir, name: str, tmp_path):
    cfg = _cfg(tiny_dir, f"reward={name}", f"paths.cache_dir={tmp_path}")
    return instantiate(cfg.task.lower_reward)


@pytest.fixture(scope="module")
def tiny_sd(tiny_dir):
    from bilevel_diffusion.models.stable_diffusion import load_stable_diffusion

    return load_stable_diffusion(_cfg(tiny_dir).model, torch.device("cpu"))


@pytest.mark.parametrize("name", ["clip_score", "aesthetic", "synthetic"])
def test_each_reward_has_a_finite_non_zero_gradient_per_image(tiny_dir, tmp_path, name) -> None:
    reward = _reward(tiny_dir, name, tmp_path)
    images = (torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9).requires_grad_(True)
    values = reward.for_prompt(PROMPT)(images)
    assert values.shape == (3,) and torch.isfinite(values).all()
    (grad,) = torch.autograd.grad(values[1], images)
    assert torch.isfinite(grad).all() and grad[1].abs().sum() > 0
    assert grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0, "a reward must score each image on its own"


def test_clip_score_is_100_max_cos_on_clip_preprocessed_pixels(tiny_dir, tmp_path) -> None:
    from bilevel_diffusion.rewards.base import CLIP_MEAN, CLIP_STD

    reward = _reward(tiny_dir, "clip_score", tmp_path)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    pixels = ((images + 1) / 2 - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    embedding = torch.nn.functional.normalize(reward.clip.encode_image(pixels), dim=-1)
    expected = 100 * (embedding @ reward.text_embedding(PROMPT).T).squeeze(1).clamp(min=0)
    torch.testing.assert_close(reward(images, PROMPT), expected, rtol=1e-4, atol=1e-4)


def test_the_synthetic_head_is_the_seeded_one_and_is_reused(tiny_dir, tmp_path) -> None:
    from bilevel_diffusion.rewards.synthetic import seeded_head

    head = _reward(tiny_dir, "synthetic", tmp_path).net.fc
    path = tmp_path / "rewards" / "synthetic_head_seed0.safetensors"
    assert path.is_file()
    torch.testing.assert_close(head.weight.detach(), seeded_head(0)["weight"])
    assert abs(float(seeded_head(0)["weight"].sum()) + 0.128984) < 1e-5  # pinned: the same head on every machine
    assert not torch.equal(seeded_head(0)["weight"], seeded_head(1)["weight"])
    save_file(seeded_head(5), str(path))  # a head carried from another machine is used as it is
    torch.testing.assert_close(_reward(tiny_dir, "synthetic", tmp_path).net.fc.bias.detach(), seeded_head(5)["bias"])


def test_missing_reward_weights_and_hps_are_clear_config_errors(tiny_dir, tmp_path) -> None:
    from bilevel_diffusion.errors import find_user_error

    with pytest.raises(Exception) as aesthetic:
        instantiate(_cfg(tmp_path).task.lower_reward)
    assert "LAION aesthetic predictor weights not found at " in str(find_user_error(aesthetic.value))
    assert "sac+logos+ava1-l14-linearMSE.pth (downloads are off)" in str(find_user_error(aesthetic.value))
    with pytest.raises(Exception) as hps:
        _reward(tiny_dir, "hps", tmp_path)
    assert "HPSv2 weights not found at " in str(find_user_error(hps.value))


def test_the_offline_tokenizer_matches_clip(tiny_sd) -> None:
    import clip

    ids = tiny_sd.tokenizer([PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
    reference = clip.tokenize([PROMPT])[0]
    length = int((reference != 0).sum())
    assert tiny_sd.tokenizer.model_max_length == 77
    assert torch.equal(ids[:length], reference[:length])


def test_guidance_through_the_vae_decoder_raises_the_reward(tiny_dir, tiny_sd, tmp_path) -> None:
    from bilevel_diffusion.lower_solvers.guided_sampling import GuidedSampler

    reward = _reward(tiny_dir, "aesthetic", tmp_path).for_prompt(PROMPT)
    sampler = GuidedSampler(num_steps=6, batch_size=8, clip_sample=False)
    noise = torch.randn(8, *tiny_sd.latent_shape, generator=torch.Generator().manual_seed(0))
    args = {"decode": tiny_sd.decode, "nfe_per_sample": tiny_sd.nfe_per_sample}
    plain = sampler.sample(tiny_sd.eps_for(PROMPT), tiny_sd.betas, noise, **args)
    guided = sampler.sample(tiny_sd.eps_for(PROMPT), tiny_sd.betas, noise, reward, lam=1e-3, **args)
    assert plain.images.shape == (8, 3, 32, 32) and plain.nfe == 8 * 6 * 2
    with torch.no_grad():
        assert (reward(guided.images) > reward(plain.images)).all()


@pytest.mark.slow  # the fast suite runs every SD task x estimator pair in-process (test_task_estimator_pairs.py)
def test_tiny_smoke_run_writes_the_run_contract(tiny_dir, tmp_path) -> None:
    result = run_cli("task=finetune_aesthetic", "model=tiny", "experiment=smoke", f"model.path={tiny_dir}",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = assert_run_contract(tmp_path / "run", "finetune_aesthetic", "closed_form")
    assert summary["clip_score"] == summary["r1"] > 0 and summary["reward"] == summary["r2"]
    assert summary["fid_features"].startswith("clip ViT-B/16") and len(summary["prompts"]) == 4
    assert 1e-3 <= summary["lambda"] <= 1e3 and summary["fid_vs_pretrained"] > -1e-6
    assert (tmp_path / "run" / "samples.png").is_file()


def test_a_missing_model_folder_is_a_config_error_naming_it(tiny_dir, tmp_path) -> None:
    from bilevel_diffusion.errors import ConfigError
    from bilevel_diffusion.models.stable_diffusion import load_stable_diffusion

    with pytest.raises(ConfigError, match=f"model.path={tmp_path / 'absent'} is not a folder; model=tiny builds"):
        load_stable_diffusion(_cfg(tmp_path / "absent").model, torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"Stable Diffusion weights for .* could not be loaded \(OSError: .*config.json"):
        load_stable_diffusion(_cfg(tmp_path).model, torch.device("cpu"))


@pytest.mark.slow
def test_missing_stable_diffusion_weights_are_one_line_and_exit_2(tiny_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hugging Face cache
    result = run_cli("task=finetune_aesthetic", f"model.weights_dir={tiny_dir}", "model.download=false",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0]
    assert errors[0].startswith("error: Stable Diffusion weights for 'stable-diffusion-v1-5/stable-diffusion-v1-5'")
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5" in errors[0] and "model.path" in errors[0]
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["closed_form", "grid", "random", "bayesian", "weighted_sum"])
def test_every_scenario_a_estimator_runs_on_stable_diffusion(tiny_dir, tmp_path, method) -> None:
    budget = {"closed_form": ["upper_estimator.num_steps=20"], "random": ["upper_estimator.n_trials=3"],
              "bayesian": ["upper_estimator.n_trials=3", "upper_estimator.n_startup_trials=2"]}.get(method, [])
    result = run_cli("task=finetune_synthetic", "model=tiny", "experiment=smoke", f"model.path={tiny_dir}",
                     f"upper_estimator={method}", *budget, "task.prompts=[fox,horse]", "eval.num_samples=8",
                     "lower_solver.scheduler=pndm", "reward.image_size=64", f"paths.cache_dir={tmp_path}",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = assert_run_contract(tmp_path / "run", "finetune_synthetic", method)
    assert summary["sampler_nfe"] > 0 and summary["reward_model"] == "SyntheticReward"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["prompts"] == ["fox", "horse"]


def test_finetune_synthetic_takes_no_step_from_a_pool_below_the_ess_threshold(tiny_dir, tmp_path) -> None:
    from conftest import read_jsonl, run_in_process

    run_dir = tmp_path / "run"
    code, stderr = run_in_process("task=finetune_synthetic", "model=tiny", f"model.path={tiny_dir}", "experiment=smoke",
                                  "hardware=cpu", "upper_estimator=closed_form_pool", "upper_estimator.num_steps=6",
                                  "upper_estimator.min_ess=0.99", "upper_estimator.lambda_init=0.01", "task.log_every=1",
                                  "task.prompts=[fox]", "task.pool_samples=8", "eval.num_samples=2", "lower_solver.num_steps=2", f"hydra.run.dir={run_dir}")
    assert code == 0, stderr[-2000:]
    rows = [row for row in read_jsonl(run_dir / "metrics.jsonl") if "hypergrad" in row]
    assert len(rows) == 6 and any(row["skipped_low_ess"] for row in rows), rows
    for row, after in zip(rows, rows[1:]):
        assert row["skipped_low_ess"] == int(row["ess"] < 0.99 * 8)
        if row["skipped_low_ess"]:
            assert after["lambda"] == row["lambda"], "a step was taken from a pool below the ESS threshold"


def test_model_tiny_builds_its_models_on_first_use_and_reuses_them(tmp_path) -> None:
    from omegaconf import OmegaConf

    cfg = compose("task=finetune_aesthetic", "model=tiny", f"paths.cache_dir={tmp_path}")
    path = Path(OmegaConf.select(cfg, "model.path"))  # resolving it builds the models
    assert path == tmp_path / "tiny_sd" and (path / "unet").is_dir() and (path / "clip" / "ViT-B-16.pt").is_file()
    stamp = (path / "unet").stat().st_mtime_ns
    assert Path(OmegaConf.select(cfg, "model.weights_dir")) == path
    assert (path / "unet").stat().st_mtime_ns == stamp, "built once"
    assert not list(tmp_path.glob("tiny_sd.tmp*")), "no temporary folder left"
