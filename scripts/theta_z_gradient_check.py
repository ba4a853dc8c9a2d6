"""How well each theta_z gradient estimator of paper Alg. 6 points, at a fixed trained network
(``docs/method.md``, "theta_z's F-gradient").

    python scripts/theta_z_gradient_check.py [--task noise_schedule_gmm] [--train-steps 1500] [--repeats 10]
        [--out outputs/theta_z_gradient_check.json] [override ...]

The network is trained for --train-steps score-matching steps under the task's initial schedule (seed 0). Two
yardsticks, both on noise disjoint from the candidates':

- ``cos_reference``: cosine with the back-propagated FID gradient averaged over --ref-seeds draws of
  --ref-samples samples (``reference_self_cosine``: two such gradients from disjoint noise);
- ``cos_fd``: cosine with the true gradient of the in-loop FID, estimated from --fd-directions central finite
  differences along random unit directions v_k (step --fd-step x |theta|, --ref-samples samples, common noise):
  sum_k (g.v_k) D_k / sqrt(sum_k (g.v_k)^2 sum_k D_k^2), which estimates cos(g, grad F) (noise ~1/sqrt(K)).

Candidates: ``backprop`` with the x0 cut below ``DETACH_X0_BELOW`` (whatever the estimator's setting) at the
estimator's n_obj and at 36 (the official in-loop sample count), and at n_obj without the cut of the first step's
x0 graph (``ddim_differentiable``); ``zeroth_order`` over all weights with the estimator's delta_z and 1 (official)
or 64 directions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn.utils import vector_to_parameters

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import bilevel_diffusion  # noqa: E402, F401  (config resolvers)
from bilevel_diffusion.runtime import RunContext  # noqa: E402
from bilevel_diffusion.sampling.ddim import DETACH_X0_BELOW  # noqa: E402
from bilevel_diffusion.tracking.recorder import Recorder  # noqa: E402
from bilevel_diffusion.upper_estimators.penalty import backprop_gradient, two_point_gradient  # noqa: E402


def _cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    flat_a, flat_b = torch.cat([t.flatten() for t in a]).double(), torch.cat([t.flatten() for t in b]).double()
    return float(flat_a @ flat_b / (flat_a.norm() * flat_b.norm()).clamp_min(1e-300))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="noise_schedule_gmm")
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--ref-samples", type=int, default=4000)
    parser.add_argument("--ref-seeds", type=int, default=8)
    parser.add_argument("--fd-directions", type=int, default=24)
    parser.add_argument("--fd-step", type=float, default=2e-3)
    parser.add_argument("--out", default="outputs/theta_z_gradient_check.json")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (e.g. experiment=schedule_quick)")
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"task={args.task}", "upper_estimator=zeroth_order",
                                                       f"lower_solver.num_steps={args.train_steps}", "hardware=cpu",
                                                       *args.overrides])
    estimator_cfg = cfg.upper_estimator
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        ctx = RunContext(run_dir=run_dir, cache_dir=Path(cfg.paths.cache_dir), device=torch.device("cpu"),
                         dtype=torch.float32, seed=0, resume=False, recorder=Recorder(run_dir, OmegaConf.create({})))
        problem = instantiate(cfg.task).problem(ctx)
        schedule = problem.with_params(problem.schedule.as_dict())
        started = time.perf_counter()
        model = problem.train(schedule, desc="train the fixed point").model
        params = [p for p in model.parameters() if p.requires_grad]
        steps, n_obj = int(estimator_cfg.obj_inference_steps), int(estimator_cfg.n_obj)

        def backprop(n: int, seed: int, cut: float = DETACH_X0_BELOW) -> list[torch.Tensor]:
            return backprop_gradient(params, lambda: problem.in_loop_fid_differentiable(
                model, schedule, n, seed, steps, cut)[0]).grads

        def fid(n: int, seed: int) -> float:
            return problem.in_loop_fid(model, schedule, n, seed, steps, int(estimator_cfg.obj_batch_size))[0]

        flat = torch.cat([p.detach().flatten() for p in params])
        generator, step = torch.Generator().manual_seed(5), args.fd_step * float(flat.norm())
        directions, derivatives = [], []
        for _ in range(args.fd_directions):
            v = torch.randn(flat.shape, generator=generator, dtype=flat.dtype)
            v /= v.norm()
            pair = []
            for sign in (1.0, -1.0):
                vector_to_parameters(flat + sign * step * v, params)
                pair.append(fid(args.ref_samples, 30_000))
            vector_to_parameters(flat.clone(), params)
            directions.append(v)
            derivatives.append((pair[0] - pair[1]) / (2 * step))
        directions_t, derivatives_t = torch.stack(directions).double(), torch.tensor(derivatives, dtype=torch.float64)

        def cos_fd(g: list[torch.Tensor]) -> float:
            projections = directions_t @ torch.cat([t.flatten() for t in g]).double()
            return float(projections @ derivatives_t / (projections.norm() * derivatives_t.norm()).clamp_min(1e-300))

        reference = [torch.zeros_like(p) for p in params]
        for seed in range(args.ref_seeds):
            for total, g in zip(reference, backprop(args.ref_samples, 10_000 + seed)):
                total.add_(g / args.ref_seeds)
        halves = [backprop(args.ref_samples, 20_000 + seed) for seed in range(2)]

        def zeroth_order(directions: int, seed: int) -> list[torch.Tensor]:
            return two_point_gradient(params, lambda noise_seed: fid(n_obj, noise_seed), float(estimator_cfg.delta_z),
                                      directions, torch.Generator().manual_seed(seed)).grads

        candidates = {f"backprop, n_obj={n_obj}": lambda seed: backprop(n_obj, seed),
                      "backprop, n_obj=36": lambda seed: backprop(36, seed),
                      f"backprop without the x0 cut, n_obj={n_obj}": lambda seed: backprop(n_obj, seed, 0.0),
                      f"zeroth_order, 1 direction, n_obj={n_obj}": lambda seed: zeroth_order(1, seed),
                      f"zeroth_order, 64 directions, n_obj={n_obj}": lambda seed: zeroth_order(64, seed)}
        rows = {}
        for name, estimate in candidates.items():
            estimates = [estimate(seed) for seed in range(args.repeats)]
            row = {}
            for yardstick, cosine in (("cos_reference", lambda g: _cosine(g, reference)), ("cos_fd", cos_fd)):
                values = [cosine(g) for g in estimates]
                row[yardstick] = {"median": statistics.median(values), "min": min(values), "max": max(values),
                                  "fraction_above_0.3": sum(v > 0.3 for v in values) / len(values), "values": values}
            rows[name] = row
            print(f"{name:48s} cos_reference median {row['cos_reference']['median']:+.3f}  "
                  f"cos_fd median {row['cos_fd']['median']:+.3f} (range {row['cos_fd']['min']:+.3f} .. "
                  f"{row['cos_fd']['max']:+.3f})", flush=True)
    result = {"task": args.task, "overrides": args.overrides, "train_steps": args.train_steps,
              "num_parameters": sum(p.numel() for p in params), "ref_samples": args.ref_samples,
              "ref_seeds": args.ref_seeds, "repeats": args.repeats, "obj_inference_steps": steps,
              "reference_self_cosine": _cosine(*halves), "reference_cos_fd": cos_fd(reference),
              "fd_directions": args.fd_directions, "fd_step": args.fd_step, "candidates": rows,
              "wall_clock_s": time.perf_counter() - started}
    print(f"two independent {args.ref_samples}-sample backprop gradients: cosine "
          f"{result['reference_self_cosine']:+.3f}; the reference's cos_fd {result['reference_cos_fd']:+.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
