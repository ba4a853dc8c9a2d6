"""The embedded pre-trained MNIST eps-model (docs/pretrained_mnist.md): its file matches its card, the card's
numbers meet the targets, a fresh small evaluation agrees with the card's, and task=finetune_mnist uses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bilevel_diffusion import pretrained_mnist
from bilevel_diffusion.checkpoint import checked_tensors
from bilevel_diffusion.data.mnist import load_mnist5k
from bilevel_diffusion.errors import ConfigError
from conftest import ROOT, compose

CARD = json.loads(pretrained_mnist.CARD.read_text())


def test_the_weights_are_small_and_pass_the_cards_checksum() -> None:
    assert pretrained_mnist.WEIGHTS.stat().st_size < 6_000_000  # float16, no optimizer state
    tensors, problem = checked_tensors(pretrained_mnist.WEIGHTS)
    assert problem is None and CARD["sha256"] and len(tensors) > 10
    assert CARD["recipe"] == json.loads(json.dumps(pretrained_mnist.RECIPE)), "the card describes today's recipe"


def test_the_cards_fid_meets_its_target() -> None:
    evaluation = CARD["evaluation"]
    assert evaluation["num_samples"] == 1000 and evaluation["num_inference_steps"] == 50
    assert evaluation["fid_floor_n"] == 1000 and evaluation["fid"] <= 4 * evaluation["fid_floor"], evaluation
    assert evaluation["kid"] > evaluation["kid_floor"], "the model is not better than real data"


def test_the_cards_confident_fraction_meets_its_target() -> None:
    assert CARD["evaluation"]["confident_fraction"] >= 0.85, CARD["evaluation"]


def test_a_fresh_small_evaluation_agrees_with_the_card() -> None:
    check = CARD["check"]
    data = load_mnist5k(**{k: v for k, v in pretrained_mnist.RECIPE["data"].items() if k != "name"},
                        cache_dir=ROOT / "outputs" / "cache")
    fresh = pretrained_mnist.evaluate(pretrained_mnist.load(), data, ROOT / "outputs" / "cache",
                                      num_samples=check["num_samples"],
                                      num_inference_steps=check["num_inference_steps"])
    # the samples are the card's to float rounding, the FID features the shipped classifier
    assert fresh["confident_fraction"] == pytest.approx(check["confident_fraction"], abs=0.03)
    assert fresh["fid_over_floor"] == pytest.approx(check["fid_over_floor"], rel=0.25)


def test_finetune_mnist_uses_it_by_default_and_refuses_another_schedule() -> None:
    from hydra.utils import instantiate

    assert compose("task=finetune_mnist").task.pretrained == "embedded"
    with pytest.raises(Exception) as err:
        instantiate(compose("task=finetune_mnist", "schedule=linear").task)
    assert isinstance(err.value.__cause__ or err.value, ConfigError)
    assert "trained under schedule=cosine" in str(err.value)


def test_training_one_remains_an_option_and_the_summary_carries_the_distances_with_n(tmp_path, smoke_args) -> None:
    from conftest import assert_run_contract, run_in_process

    code, stderr = run_in_process("task=finetune_mnist", *smoke_args, "task.pretrained=train", "upper_estimator=grid",
                                  "upper_estimator.num_points=2", f"hydra.run.dir={tmp_path}")
    assert code == 0, stderr[-2000:]
    summary = assert_run_contract(tmp_path, "finetune_mnist", "grid")
    assert summary["pretrained"] == "train" and summary["distance_num_samples"] == 16  # eval.num_samples of smoke
    assert summary["fid_vs_pretrained"] >= 0 and isinstance(summary["kid_vs_pretrained"], float)


def test_pretraining_resumes_and_counts_the_time_of_every_attempt(tmp_path, monkeypatch) -> None:
    """``make pretrain`` runs for hours on a CPU: a rerun after a stop continues from the last checkpoint, and the
    card's training time is the sum over attempts (a rerun of a finished training adds nothing and changes nothing)."""
    import signal

    import torch

    from bilevel_diffusion import stopping

    recipe = {**pretrained_mnist.RECIPE, "num_steps": 6, "batch_size": 8,
              "architecture": {**pretrained_mnist.RECIPE["architecture"], "block_out_channels": [8, 8, 8]}}
    data = load_mnist5k(**{k: v for k, v in recipe["data"].items() if k != "name"},
                        cache_dir=ROOT / "outputs" / "cache")
    def as_if_it_had_taken(seconds: float, checkpoint: Path) -> None:  # an attempt's time, as its checkpoint says
        state = torch.load(checkpoint, weights_only=False)
        torch.save({**state, "wall_clock_s": seconds}, checkpoint)

    straight, seconds = pretrained_mnist.train(data, tmp_path / "a", recipe, checkpoint_every=2)
    assert 0 < seconds < 1000
    assert [row["step"] for row in map(json.loads, (tmp_path / "a" / "metrics.jsonl").open())] == [2, 4, 6]
    as_if_it_had_taken(1000.0, tmp_path / "a" / "last.pt")
    again, seconds_again = pretrained_mnist.train(data, tmp_path / "a", recipe, checkpoint_every=2)
    assert 1000 <= seconds_again < 1000 + max(seconds, 1.0), "a finished training reruns nothing"
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), again.state_dict().values()))
    monkeypatch.setattr(stopping, "_requested", signal.SIGTERM)  # a stop asked for: checkpoint after step 1, stop
    with pytest.raises(stopping.Stopped):
        pretrained_mnist.train(data, tmp_path / "b", recipe, checkpoint_every=2)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["step"] == 1
    as_if_it_had_taken(1000.0, tmp_path / "b" / "last.pt")
    monkeypatch.setattr(stopping, "_requested", None)
    resumed, total = pretrained_mnist.train(data, tmp_path / "b", recipe, checkpoint_every=2)
    assert total > 1000, "the stopped attempt's time is counted"
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
    wider = {**recipe, "architecture": {**recipe["architecture"], "block_out_channels": [16, 16, 16]}}
    kept = (tmp_path / "b" / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="another recipe"):  # another recipe's folder is not resumed into
        pretrained_mnist.train(data, tmp_path / "b", wider, checkpoint_every=2)
    assert (tmp_path / "b" / "last.pt").read_bytes() == kept


def test_a_float16_weights_file_loads_as_the_network_its_card_evaluated(tmp_path, monkeypatch) -> None:
    from bilevel_diffusion.checkpoint import save_cached

    recipe = {**pretrained_mnist.RECIPE, "weights_dtype": "float16"}
    torch.manual_seed(0)
    network = pretrained_mnist.build_network(recipe)
    before = {name: value.clone() for name, value in network.state_dict().items()}
    tensors = pretrained_mnist.stored_weights(network, recipe)
    assert all(value.dtype == torch.float16 for value in tensors.values())
    rounded = network.state_dict()  # the network the card evaluates: rounded, float32 again
    assert all(value.dtype == torch.float32 for value in rounded.values())
    assert any(not torch.equal(before[name], rounded[name]) for name in before)
    monkeypatch.setattr(pretrained_mnist, "WEIGHTS", tmp_path / "mnist_eps.safetensors")
    save_cached(tensors, pretrained_mnist.WEIGHTS)
    loaded = pretrained_mnist.load().state_dict()
    assert all(torch.equal(loaded[name], rounded[name]) for name in rounded)


def test_the_recipes_differ_only_in_width_precision_and_length() -> None:
    shipped, small, wide = (pretrained_mnist.RECIPES[name] for name in ("shipped", "small", "wide"))
    assert shipped is pretrained_mnist.RECIPE
    changed = {"architecture", "mixed_precision", "weights_dtype"}
    assert {k: v for k, v in wide.items() if k not in changed} == {k: v for k, v in small.items() if k not in changed}
    assert pretrained_mnist.build_solver(torch.nn.Linear(2, 2), wide).autocast_dtype == torch.bfloat16
    assert pretrained_mnist.build_solver(torch.nn.Linear(2, 2), small).autocast_dtype is None
    assert wide["architecture"]["block_out_channels"] == [2 * c for c in small["architecture"]["block_out_channels"]]
    # the shipped model: the wide recipe, trained longer
    assert {k: v for k, v in shipped.items() if k != "num_steps"} == {k: v for k, v in wide.items() if k != "num_steps"}
    assert shipped["num_steps"] > wide["num_steps"]
