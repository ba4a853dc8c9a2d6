"""The embedded pre-trained MNIST eps-model (docs/pretrained_mnist.md): its file matches its card, the card's
numbers meet the targets, a fresh small evaluation agrees with the card's, and task=finetune_mnist uses it."""

from __future__ import annotations

import json

import pytest

from bilevel_diffusion import pretrained_mnist
from bilevel_diffusion.checkpoint import checked_tensors
from bilevel_diffusion.data.mnist import load_mnist5k
from bilevel_diffusion.errors import ConfigError
from conftest import ROOT, compose

CARD = json.loads(pretrained_mnist.CARD.read_text())


def test_the_weights_are_small_and_pass_the_cards_checksum() -> None:
    assert pretrained_mnist.WEIGHTS.stat().st_size < 5_000_000
    tensors, problem = checked_tensors(pretrained_mnist.WEIGHTS)
    assert problem is None and CARD["sha256"] and len(tensors) > 10
    assert CARD["recipe"] == json.loads(json.dumps(pretrained_mnist.RECIPE)), "the card describes today's recipe"


def test_the_cards_numbers_meet_the_targets() -> None:
    evaluation = CARD["evaluation"]
    assert evaluation["num_samples"] == 1000 and evaluation["num_inference_steps"] == 50
    assert evaluation["fid"] <= 4 * evaluation["fid_floor"], evaluation
    assert evaluation["confident_fraction"] >= 0.85, evaluation


def test_a_fresh_small_evaluation_agrees_with_the_card() -> None:
    check = CARD["check"]
    data = load_mnist5k(**{k: v for k, v in pretrained_mnist.RECIPE["data"].items() if k != "name"},
                        cache_dir=ROOT / "outputs" / "cache")
    fresh = pretrained_mnist.evaluate(pretrained_mnist.load(), data, ROOT / "outputs" / "cache",
                                      num_samples=check["num_samples"],
                                      num_inference_steps=check["num_inference_steps"])
    # the samples are the card's to float rounding; the FID features come from this machine's cached classifier
    assert fresh["confident_fraction"] == pytest.approx(check["confident_fraction"], abs=0.03)
    assert fresh["fid_over_floor"] == pytest.approx(check["fid_over_floor"], rel=0.25)


def test_finetune_mnist_uses_it_by_default_and_refuses_another_schedule() -> None:
    from hydra.utils import instantiate

    assert compose("task=finetune_mnist").task.pretrained == "embedded"
    with pytest.raises(Exception) as err:
        instantiate(compose("task=finetune_mnist", "schedule=linear").task)
    assert isinstance(err.value.__cause__ or err.value, ConfigError)
    assert "trained under schedule=cosine" in str(err.value)
