"""Scenario A against its oracles (docs/method.md): the hyper-gradient, the guided sampler, the bilevel loop."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from bilevel_diffusion.errors import ConfigError
from bilevel_diffusion.lower_solvers.guided_sampling import GuidedSampler, LinearisedReward
from bilevel_diffusion.models.stable_diffusion import ClassifierFreeGuidance
from bilevel_diffusion.models.gaussian import GaussianEps
from bilevel_diffusion.runtime import RunContext
from bilevel_diffusion.schedules.family import CosineSchedule
from bilevel_diffusion.tasks.finetune_gaussian import GaussianTilt
from bilevel_diffusion.tracking.recorder import Recorder
from bilevel_diffusion.upper_estimators.closed_form import ClosedFormEstimator, RewardPool, hypergradient
from conftest import read_jsonl

# lambda* = 2 for this tilt; the weights stay well spread for lambda in [1, 4]
BOX = (1e-3, 1e3)
ORACLE = GaussianTilt(mean=[0.5, -1.0], cov_diag=[1.0, 0.5], direction=[0.5, 0.5], target=[0.75, -0.875])


def exact_pool(oracle: GaussianTilt, n: int, seed: int, lam_ref: float | None = None) -> RewardPool:
    """n exact samples of p_pre (or of p_{lam_ref}) with their rewards."""
    z = torch.randn(n, len(oracle.mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = (oracle.mean if lam_ref is None else oracle.tilted_mean(lam_ref)) + oracle.var.sqrt() * z
    return RewardPool(oracle.r1(x), oracle.r2(x), lam_ref)


def make_ctx(run_dir, resume: bool = False) -> RunContext:
    return RunContext(run_dir=run_dir, cache_dir=run_dir, device=torch.device("cpu"), dtype=torch.float32, seed=0,
                      resume=resume, recorder=Recorder(run_dir, OmegaConf.create({}), resume=resume))


def test_oracle_lambda_star_zeroes_the_analytic_gradient() -> None:
    assert ORACLE.lambda_star(1e-3, 1e3) == pytest.approx(2.0)
    assert ORACLE.gradient(2.0) == pytest.approx(0.0, abs=1e-12)
    h = 1e-5
    assert ORACLE.gradient(1.3) == pytest.approx((ORACLE.objective(1.3 + h) - ORACLE.objective(1.3 - h)) / (2 * h))


FLAT = GaussianTilt([0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.05, 3.0])  # lambda* = 20, F nearly flat around it
TILT_3D = GaussianTilt([1.0, -1.0, 0.5], [0.3, 2.0, 1.0], [2.0, -1.0, 0.5], [3.0, -4.0, 1.0])


@pytest.mark.parametrize("oracle", [ORACLE, FLAT, TILT_3D], ids=["default", "flat-optimum", "3-d"])
def test_lambda_star_rel_sd_is_the_spread_of_the_monte_carlo_root(oracle: GaussianTilt) -> None:
    """The predicted spread of 1/lambda* located from N samples equals the spread of the root of the N-sample
    hyper-gradient Cov(r1, r2) (linearised: u_hat = u* + Cov_N / |Sigma a|^2) over many pools drawn at lambda*."""
    lam, n = oracle.lambda_star(1e-3, 1e3), 2_000
    curvature = float((oracle.shift**2).sum())
    roots = torch.tensor([1 / lam + hypergradient(exact_pool(oracle, n, seed, lam), lam).grad * lam**2 / curvature
                          for seed in range(300)])
    assert float(roots.mean()) == pytest.approx(1 / lam, abs=4 * float(roots.std()) / math.sqrt(300))
    assert float(roots.std()) * lam == pytest.approx(oracle.lambda_star_rel_sd(lam, n), rel=0.15)


@pytest.mark.parametrize("lam", [1.0, 4.0], ids=["negative-gradient", "positive-gradient"])
def test_mc_hypergradient_matches_the_analytic_derivative_with_the_right_sign(lam: float) -> None:
    exact = ORACLE.gradient(lam)
    assert (exact < 0) == (lam < 2.0)
    errors = {}
    for n in (1_000, 16_000):
        estimates = torch.tensor([hypergradient(exact_pool(ORACLE, n, seed), lam).grad for seed in range(24)])
        assert bool((torch.sign(estimates) == math.copysign(1.0, exact)).all()), "wrong sign"
        errors[n] = float(((estimates - exact) ** 2).mean().sqrt())
        assert abs(float(estimates.mean()) - exact) < 4 * errors[n] / math.sqrt(24) + 0.01 * abs(exact)
    assert 2.5 < errors[1_000] / errors[16_000] < 6.5, "Monte Carlo error should shrink like 1/sqrt(N)"


def test_refreshed_pool_from_p_lambda_ref_gives_the_same_gradient() -> None:
    pool = exact_pool(ORACLE, 200_000, 0, lam_ref=1.5)
    for lam in (1.2, 1.5, 2.5):
        assert hypergradient(pool, lam).grad == pytest.approx(ORACLE.gradient(lam), rel=0.05, abs=2e-3)


def test_penalty_form_is_the_derivative_of_f_gamma_and_tends_to_the_covariance_form() -> None:
    pool = exact_pool(ORACLE, 50_000, 1)
    r1, r2 = pool.r1, pool.r2

    def f_gamma(lam: float, gamma: float) -> float:  # gamma * lambda * (log Z_r2 - log Z_h), Z by Monte Carlo
        return gamma * lam * float(torch.logsumexp(r2 / lam, 0) - torch.logsumexp((r2 + r1 / gamma) / lam, 0))

    h = 1e-4
    for gamma in (0.5, 5.0):
        numeric = (f_gamma(1.5 + h, gamma) - f_gamma(1.5 - h, gamma)) / (2 * h)
        assert hypergradient(pool, 1.5, gamma).grad == pytest.approx(numeric, rel=1e-4)
    limit = hypergradient(pool, 1.5).grad
    assert hypergradient(pool, 1.5, 1e4).grad == pytest.approx(limit, rel=1e-3)
    assert abs(hypergradient(pool, 1.5, 1.0).grad - limit) > 1e-3, "small gamma must differ from the limit"


@pytest.mark.parametrize("lam", [1e-4, 1e4])
@pytest.mark.parametrize("gamma", [None, 10.0])
def test_extreme_lambda_gives_finite_numbers(lam: float, gamma: float | None) -> None:
    g = torch.Generator().manual_seed(0)
    pool = RewardPool(30 * torch.randn(512, generator=g), 30 * torch.randn(512, generator=g))
    estimate = hypergradient(pool, lam, gamma)
    assert math.isfinite(estimate.grad) and math.isfinite(estimate.objective)
    assert 1.0 - 1e-9 <= estimate.ess <= 512 + 1e-6


def gaussian_sampler_setup(oracle: GaussianTilt, dtype: torch.dtype = torch.float32):
    schedule = CosineSchedule(start=0.0, end=1.0, tau=1.0, eps=0.008)
    model = GaussianEps(oracle.mean, oracle.var, schedule.alphas_cumprod().detach())
    noise = torch.randn(4096, len(oracle.mean), generator=torch.Generator().manual_seed(0), dtype=dtype)
    return model, schedule.betas().detach(), noise


def _share_of_tilt(sampler: GuidedSampler, lam: float) -> float:
    """The share of the exact mean shift Sigma a / lambda that guided samples reach (same noise as unguided)."""
    model, betas, noise = gaussian_sampler_setup(ORACLE)
    guided = sampler.sample(model, betas, noise, ORACLE.r2, lam).images.double()
    plain = sampler.sample(model, betas, noise).images.double()
    shift = ORACLE.shift / lam
    return float(((guided - plain).mean(0) @ shift) / (shift @ shift))


@pytest.mark.parametrize("scheduler", ["ddim", "dpm_solver"])
@pytest.mark.parametrize("steps", [10, 25, 100])
def test_guidance_carries_the_whole_tilt_in_float32(scheduler: str, steps: int) -> None:
    """Exact eps of a Gaussian and a linear reward: look-ahead guidance is exact, also in float32 (the first step of
    the cosine schedule, abar = 2.4e-9, forms x0_hat and its derivative in float64)."""
    sampler = GuidedSampler(num_steps=steps, batch_size=4096, clip_sample=False, scheduler=scheduler)
    for lam in (0.5, 2.0):
        assert _share_of_tilt(sampler, lam) >= 0.995


def test_without_the_float64_step_float32_loses_the_first_steps_guidance() -> None:
    sampler = GuidedSampler(num_steps=25, batch_size=4096, clip_sample=False, float64_below=0.0)
    assert _share_of_tilt(sampler, 0.5) < 0.96


@pytest.mark.parametrize("scheduler,steps,tol", [("dpm_solver", 100, 0.05), ("ddim", 200, 0.06)])
def test_guided_samples_have_the_tilted_mean(scheduler: str, steps: int, tol: float) -> None:
    model, betas, noise = gaussian_sampler_setup(ORACLE)
    sampler = GuidedSampler(num_steps=steps, batch_size=4096, clip_sample=False, scheduler=scheduler)
    for lam in (0.5, 2.0):
        out = sampler.sample(model, betas, noise, ORACLE.r2, lam)
        assert out.images.dtype == torch.float32
        assert torch.allclose(out.images.double().mean(0), ORACLE.tilted_mean(lam), atol=tol), out.images.mean(0)
        assert out.nfe == 4096 * steps
    plain = sampler.sample(model, betas, noise).images
    assert torch.allclose(plain.double().mean(0), ORACLE.mean, atol=0.05)


def test_strong_guidance_with_clipping_saturates_a_linear_reward_instead_of_reversing_it() -> None:
    """With x0 clipped to [-1, 1], E[a.x] must keep rising as lambda shrinks, up to the box maximum |a|_1 (without
    eps re-derived from the clipped x0 it fell to -|a|_1: the clipped-away push came back as noise)."""
    schedule = CosineSchedule(start=0.0, end=1.0, tau=1.0, eps=0.008)
    model = GaussianEps(torch.zeros(16), torch.full((16,), 0.1), schedule.alphas_cumprod().detach())
    a = torch.randn(16, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    sampler = GuidedSampler(num_steps=10, batch_size=64)
    means = [float(sampler.sample(model, schedule.betas().detach(), noise, lambda x: x @ a, lam).images.mean(0) @ a)
             for lam in (100.0, 1.0, 0.1, 0.01, 0.001)]
    assert all(small >= large - 1e-6 for large, small in zip(means, means[1:])), means
    assert means[-1] == pytest.approx(float(a.abs().sum()), rel=1e-3)


@pytest.mark.slow
def test_finetune_mnist_over_optimises_the_proxy(tmp_path) -> None:
    """The point of task=finetune_mnist: as lambda shrinks r2 (proxy) keeps rising while r1 (CNN) rises, then falls."""
    from hydra.utils import instantiate

    from conftest import ROOT, compose

    cfg = compose("task=finetune_mnist", "experiment=scenario_a_quick", "task.prompts=[3]")
    ctx = RunContext(run_dir=tmp_path, cache_dir=ROOT / "outputs" / "cache", device=torch.device("cpu"),
                     dtype=torch.float32, seed=0, resume=False, recorder=Recorder(tmp_path, OmegaConf.create({})))
    parts = instantiate(cfg.task).problem_parts(ctx)
    noise = torch.randn(32, *parts["sample_shape"], generator=torch.Generator().manual_seed(1))
    sampler, r1, r2 = instantiate(cfg.lower_solver), parts["r1"](3), parts["r2"](3)
    rows = []
    for lam in (10.0, 0.1, 0.003):
        images = sampler.sample(parts["eps_fn"], parts["betas"], noise, r2, lam).images
        with torch.no_grad():
            rows.append((float(r1(images).mean()), float(r2(images).mean())))
    (r1_large, r2_large), (r1_mid, r2_mid), (r1_small, r2_small) = rows
    assert r2_small > r2_mid > r2_large, rows
    assert r1_mid > max(r1_small, r1_large) + 1.0, rows


def test_relinearisation_of_a_linear_reward_changes_nothing_but_the_cost() -> None:
    model, betas, noise = gaussian_sampler_setup(ORACLE, torch.float64)
    plain = GuidedSampler(num_steps=20, batch_size=4096, clip_sample=False).sample(model, betas, noise[:64],
                                                                                  ORACLE.r2, 1.0)
    rounds = GuidedSampler(num_steps=20, batch_size=4096, clip_sample=False, relinearize_rounds=2).sample(
        model, betas, noise[:64], ORACLE.r2, 1.0)
    assert torch.allclose(plain.images, rounds.images, atol=1e-9)
    assert rounds.nfe == 3 * plain.nfe


def test_linearised_reward_is_per_sample() -> None:
    x_ref = torch.randn(3, 4, dtype=torch.float64)
    surrogate = LinearisedReward(lambda x: (x**2).sum(1), x_ref)
    assert torch.allclose(surrogate(x_ref), (x_ref**2).sum(1))
    x = x_ref + 1e-3
    assert torch.allclose(surrogate(x), (x_ref**2).sum(1) + 2e-3 * x_ref.sum(1))


def test_classifier_free_guidance_mixes_the_two_branches() -> None:
    model = lambda x, t, c: x * 0 + c.view(-1, 1)  # noqa: E731  eps = the condition value
    cfg = ClassifierFreeGuidance(model, cond=torch.tensor([1.0]), null_cond=torch.tensor([0.0]), scale=7.5)
    eps = cfg(torch.zeros(5, 2), torch.zeros(5, dtype=torch.long))
    assert torch.allclose(eps, torch.full((5, 2), 7.5))


@pytest.mark.parametrize("mean,cov,direction,target,init,param", [
    ([0.5, -1.0], [1.0, 0.5], [0.5, 0.5], [0.75, -0.875], 5.0, "log"),      # lambda* = 2, from above
    ([0.0, 0.0], [1.0, 0.5], [1.0, 1.0], [2.0, 1.0], 5.0, "log"),            # lambda* = 0.5, far below the start
    ([1.0, 0.0, 2.0], [0.3, 2.0, 1.0], [1.0, -0.5, 0.2], [3.0, -4.0, 2.0], 0.01, "log"),  # 0.246, from below
    ([0.5, -1.0], [1.0, 0.5], [0.5, 0.5], [0.75, -0.875], 5.0, "linear"),
    ([0.0, 0.0], [1.0, 0.5], [1.0, 1.0], [2.0, 1.0], 5.0, "linear"),
])
def test_bilevel_loop_converges_to_lambda_star(tmp_path, mean, cov, direction, target, init, param) -> None:
    oracle = GaussianTilt(mean, cov, direction, target)
    star = oracle.lambda_star(1e-3, 1e3)
    lr = 0.2 if param == "log" else 0.03 * max(init, star)  # linear steps need the problem's scale
    estimator = ClosedFormEstimator(lambda_init=init, num_steps=200, lr=lr, param=param, refresh_every=10,
                                    refresh_min_ess=0.1)
    draw = lambda lam_ref, step: [exact_pool(oracle, 20_000, step, lam_ref)]  # noqa: E731
    trace = estimator.optimise(draw, make_ctx(tmp_path), (1e-3, 1e3))
    assert trace.lam == pytest.approx(star, rel=0.05)
    assert all(1e-3 <= lam <= 1e3 for lam in trace.lambdas)


def test_projection_keeps_lambda_in_its_box(tmp_path) -> None:
    oracle = GaussianTilt([0.0], [1.0], [1.0], [-1.0])  # guidance only hurts: the optimum is lambda_max
    estimator = ClosedFormEstimator(lambda_init=1.0, num_steps=60, lr=0.3)
    trace = estimator.optimise(lambda lam_ref, step: [exact_pool(oracle, 5_000, step, lam_ref)], make_ctx(tmp_path),
                               (0.1, 10.0))
    assert trace.lam == pytest.approx(10.0) and oracle.lambda_star(0.1, 10.0) == 10.0


@pytest.mark.parametrize("kwargs", [{"lambda_init": 0.0}, {"min_ess": 1.0}, {"gamma": 0.0}, {"gamma": -2.0},
                                    {"lambda_init": -1.0}, {"param": "exp"},
                                    {"refresh_min_ess": 1.0}])
def test_bad_estimator_settings_are_config_errors(kwargs) -> None:
    with pytest.raises(ConfigError):
        ClosedFormEstimator(**kwargs)


def test_a_stopped_bilevel_loop_resumes_to_the_same_lambdas(tmp_path) -> None:
    estimator = ClosedFormEstimator(num_steps=40, refresh_every=10)
    draw = lambda lam_ref, step: [exact_pool(ORACLE, 2_000, step, lam_ref)]  # noqa: E731
    straight = estimator.optimise(draw, make_ctx(tmp_path / "straight"), BOX, checkpoint_every=5)

    def dying(lam_ref, step):
        if step == 20:
            raise RuntimeError("stopped")
        return draw(lam_ref, step)

    stopped = tmp_path / "stopped"
    with pytest.raises(RuntimeError):
        estimator.optimise(dying, make_ctx(stopped), BOX, checkpoint_every=5)
    resumed = estimator.optimise(draw, make_ctx(stopped, resume=True), BOX, checkpoint_every=5)
    assert resumed.lambdas == straight.lambdas and resumed.lam == straight.lam and resumed.nfe == straight.nfe
    steps = [row["step"] for row in read_jsonl(stopped / "metrics.jsonl")]
    assert steps == list(range(40)), "no lost and no repeated step"


def test_a_collapsed_pool_never_produces_a_step(tmp_path) -> None:
    """One sample carries all the weight (ESS ~ 1 of 64): with min_ess the loop takes no step on it; without, Adam
    steps on the noise of a one-sample covariance."""
    r2 = torch.zeros(64, dtype=torch.float64)
    r2[0] = 50.0
    pool = RewardPool(torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64), r2)
    draw = lambda lam_ref, step: [pool]  # noqa: E731
    careful = ClosedFormEstimator(lambda_init=1.0, num_steps=10, refresh_every=0, min_ess=0.1)
    trace = careful.optimise(draw, make_ctx(tmp_path / "careful"), BOX)
    assert trace.lam == 1.0 and set(trace.lambdas) == {1.0} and trace.low_ess_skips == 10
    rows = read_jsonl(tmp_path / "careful" / "metrics.jsonl")
    assert all(row["skipped_low_ess"] == 1 and row["ess"] < 6.4 for row in rows)
    reckless = ClosedFormEstimator(lambda_init=1.0, num_steps=10, refresh_every=0, min_ess=0.0)
    assert reckless.optimise(draw, make_ctx(tmp_path / "reckless"), BOX).lam != 1.0
