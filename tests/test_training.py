"""Score matching (paper Alg. 3): determinism, state round trip, and the FID feature network."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from bilevel_diffusion.lower_solvers.score_matching import ScoreMatchingSolver, score_matching_loss
from bilevel_diffusion.metrics.classifier import load_or_train_classifier
from bilevel_diffusion.schedules.family import CosineSchedule
from conftest import ROOT, compose


def _tiny_solver(seed: int, num_steps: int = 6, *overrides: str) -> ScoreMatchingSolver:
    from hydra.utils import instantiate

    cfg = compose("experiment=smoke", f"lower_solver.num_steps={num_steps}", *overrides)
    torch.manual_seed(seed)
    return instantiate(cfg.lower_solver)(model=instantiate(cfg.model)())


def _train(solver: ScoreMatchingSolver, steps: int, generator: torch.Generator) -> list[float]:
    abar = CosineSchedule(start=0.0, end=1.0, tau=1.0, eps=0.008).alphas_cumprod()
    x0 = torch.linspace(-1, 1, 4 * 28 * 28).view(4, 1, 28, 28)
    return [solver.step(x0, abar, generator) for _ in range(steps)]


def test_cpu_training_is_deterministic_for_a_seed() -> None:
    a = _train(_tiny_solver(0), 3, torch.Generator().manual_seed(0))
    b = _train(_tiny_solver(0), 3, torch.Generator().manual_seed(0))
    c = _train(_tiny_solver(0), 3, torch.Generator().manual_seed(1))
    assert a == b and a != c


def test_solver_state_round_trip_continues_identically() -> None:
    solver, generator = _tiny_solver(0), torch.Generator().manual_seed(0)
    _train(solver, 2, generator)
    state, gen_state = copy.deepcopy(solver.state_dict()), generator.get_state()  # a checkpoint is a snapshot
    expected = _train(solver, 2, generator)
    restored = _tiny_solver(5)
    restored.load_state_dict(state)
    assert _train(restored, 2, torch.Generator().set_state(gen_state)) == expected


def test_bf16_mixed_precision_runs_the_forward_in_bf16_and_keeps_float32_weights() -> None:
    mixed = _tiny_solver(0, 6, "lower_solver.mixed_precision=bf16")
    plain = _tiny_solver(0)
    dtypes = []
    hook = mixed.model.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    losses_mixed = _train(mixed, 2, torch.Generator().manual_seed(0))
    hook.remove()
    losses_plain = _train(plain, 2, torch.Generator().manual_seed(0))
    assert dtypes == [torch.bfloat16] * 2  # the forward pass ran under autocast
    assert all(p.dtype == torch.float32 for p in mixed.model.parameters())
    assert losses_mixed != losses_plain and losses_mixed == pytest.approx(losses_plain, rel=0.05)
    assert all(p.dtype == torch.float32 for p in mixed.ema.shadow_params)


def test_an_unknown_mixed_precision_is_one_config_error() -> None:
    from bilevel_diffusion.errors import ConfigError

    with pytest.raises(ConfigError, match="mixed_precision must be one of"):
        ScoreMatchingSolver(torch.nn.Linear(2, 2), num_steps=4, batch_size=2, lr=1e-3, mixed_precision="fp8")


def test_score_matching_loss_is_differentiable_in_the_schedule() -> None:
    schedule = CosineSchedule(start=0.0, end=1.0, tau=1.0, eps=0.008, learnable=True)
    model = _tiny_solver(0).model
    x0 = torch.zeros(8, 1, 28, 28)
    score_matching_loss(model, schedule.alphas_cumprod(), x0, torch.Generator().manual_seed(0)).backward()
    assert schedule.raw.grad is not None and torch.isfinite(schedule.raw.grad).all()
    assert float(schedule.raw.grad.abs().sum()) > 0


def test_the_shipped_fid_feature_classifier_is_the_one_its_card_describes(tmp_path) -> None:
    from bilevel_diffusion.checkpoint import tensor_digest
    from bilevel_diffusion.data.mnist import load_mnist5k
    from bilevel_diffusion.metrics.classifier import EMBEDDED, accuracy

    card = json.loads(EMBEDDED.with_suffix(".json").read_text())
    model = load_or_train_classifier(tmp_path)  # the shipped file: nothing is trained or cached
    assert not any(tmp_path.iterdir())
    assert tensor_digest(model.state_dict()) == card["sha256"]
    data = load_mnist5k(cache_dir=ROOT / "outputs" / "cache")
    assert card["heldout_accuracy"] >= 0.98
    assert accuracy(model, data.test_x, data.test_y) == pytest.approx(card["heldout_accuracy"], abs=1e-9)


@pytest.mark.slow
def test_the_classifier_recipe_trains_an_accurate_one_when_the_file_is_missing(tmp_path, monkeypatch) -> None:
    import bilevel_diffusion.metrics.classifier as classifier

    monkeypatch.setattr(classifier, "EMBEDDED", tmp_path / "missing.safetensors")
    load_or_train_classifier(tmp_path)  # trains (about a minute), then reuses the file
    assert json.loads((tmp_path / "mnist_classifier.json").read_text())["heldout_accuracy"] >= 0.98
    assert (tmp_path / "mnist_classifier.safetensors").stat().st_size > 0


def test_inception_features_without_local_weights_is_one_clear_error(tmp_path) -> None:
    import pytest

    from bilevel_diffusion.errors import ConfigError
    from bilevel_diffusion.metrics.image_quality import ImageQuality

    with pytest.raises(ConfigError, match="metrics.fid.inception_path"):
        ImageQuality(torch.zeros(4, 1, 28, 28), features="inception", inception_path=str(tmp_path / "missing.pth"))


class _NaNAfter(torch.nn.Module):
    """Wraps a model so that its output turns NaN from the ``n``-th call on."""

    def __init__(self, model: torch.nn.Module, n: int) -> None:
        super().__init__()
        self.model, self.n, self.calls = model, n, 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.model(x, t)
        return out * float("nan") if self.calls >= self.n else out


def test_nonfinite_loss_stops_before_touching_the_weights_or_skips_the_batch() -> None:
    import pytest
    from hydra.utils import instantiate

    from bilevel_diffusion.errors import NumericalFault

    cfg = compose("experiment=smoke")
    solver = instantiate(cfg.lower_solver)(model=_NaNAfter(instantiate(cfg.model)(), 2))
    _train(solver, 1, torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in solver.model.state_dict().items()}
    with pytest.raises(NumericalFault, match="non-finite score-matching loss at step 2"):
        _train(solver, 1, torch.Generator().manual_seed(0))
    assert all(torch.equal(before[k], v) for k, v in solver.model.state_dict().items())

    skipping = instantiate(cfg.lower_solver)(model=_NaNAfter(instantiate(cfg.model)(), 2), on_nonfinite="skip")
    losses = _train(skipping, 3, torch.Generator().manual_seed(0))
    assert losses[0] == losses[0] and all(loss != loss for loss in losses[1:])
    assert skipping.skipped_steps == 2 and skipping.step_count == 3


def test_resident_memory_does_not_grow_over_training_steps() -> None:
    import gc

    def rss_mib() -> float:
        gc.collect()
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * 4096 / 2**20

    solver, generator = _tiny_solver(0, num_steps=200), torch.Generator().manual_seed(0)
    _train(solver, 20, generator)
    after_20 = rss_mib()
    _train(solver, 180, generator)
    assert solver.step_count == 200
    assert rss_mib() - after_20 < 20, "memory grows with the number of steps"
