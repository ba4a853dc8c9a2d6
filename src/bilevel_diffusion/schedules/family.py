"""The 4-parameter noise-schedule family of Chen 2023 (``docs/method.md``), as differentiable torch modules.

A schedule maps the training timesteps ``t = 0..T-1`` to ``alpha_bar_t``. The parameters
``q = (start, end, tau, eps)`` live in *normalised* time: ``t' = start + (end - start) * t / T`` with
``t'`` in ``[0, 1]``. (The official code forgot to scale ``start`` by ``T``; we use the normalised form.)

``normalisation="chen"`` (default, Chen 2023 Alg. 1): ``alpha_bar(t') = (f(t') - f(end)) / (f(start) - f(end))``,
so every point of the box reaches pure noise at ``t = T`` (the last beta is clipped at 0.999, so
``alpha_bar_T <= 1e-3 * alpha_bar_{T-1}``). ``normalisation="official"``: ``alpha_bar = f(t') / f(start)``, the
official code's form, which stops at ``f(end) / f(start) > 0`` when ``end < 1`` although sampling starts from
N(0, I). Both agree where ``f(end) = 0`` (``end = 1``). See ``docs/method.md``.

Every quantity is computed in float64 from the parameters with autograd enabled, so the score-matching
loss is differentiable in ``q`` (paper Alg. 6 needs ``grad_q L_SM``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from bilevel_diffusion.errors import ConfigError

MAX_BETA = 0.999
TINY = 1e-20  # floor on f so that log/pow/division stay finite (and their gradients too)


def betas_from_alpha_bar(alpha_bar_fn, num_train_timesteps: int, t_lo: torch.Tensor, t_hi: torch.Tensor) -> torch.Tensor:
    """beta_i = clip(1 - f(t'_{i+1}) / f(t'_i), 0, 0.999) over the grid t'_i = t_lo + (t_hi - t_lo) i / T."""
    grid = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    f = alpha_bar_fn(t_lo + (t_hi - t_lo) * grid)
    return (1.0 - f[1:] / f[:-1]).clamp(0.0, MAX_BETA)


class NoiseSchedule(nn.Module):
    """Base class: a schedule is a module whose ``betas()`` are differentiable in its parameters."""

    #: names of the parameters, in the order they are stored
    param_names: tuple[str, ...] = ()

    def __init__(self, name: str = "", num_train_timesteps: int = 1000, learnable: bool = False,
                 bounds: Mapping[str, tuple[float, float]] | None = None, **values: float) -> None:
        super().__init__()
        self.name = name or type(self).__name__
        missing = set(self.param_names) - set(values)
        if missing:
            raise ValueError(f"{type(self).__name__} needs parameters {sorted(missing)}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.learnable = learnable
        self.bounds = {k: (float(lo), float(hi)) for k, (lo, hi) in (bounds or {}).items()}
        self.raw = nn.Parameter(torch.tensor([float(values[k]) for k in self.param_names], dtype=torch.float64),
                                requires_grad=learnable)
        self.project_()

    def options(self) -> dict[str, object]:
        """Constructor settings other than the parameters (passed on by :meth:`with_values`)."""
        return {}

    def with_values(self, **values: float) -> NoiseSchedule:
        """A fixed (non-learnable) schedule of this family, with these options and parameters ``values``."""
        return type(self)(name=self.name, num_train_timesteps=self.num_train_timesteps, **self.options(), **values)

    def param(self, name: str) -> torch.Tensor:
        return self.raw[self.param_names.index(name)]

    def as_dict(self) -> dict[str, float]:
        """Plain floats, for logs and ``summary.json``."""
        return {k: float(v) for k, v in zip(self.param_names, self.raw.detach().tolist())}

    def betas(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def alphas_cumprod(self) -> torch.Tensor:
        """alpha_bar_t = prod_{s<=t} (1 - beta_s), shape [T], float64, differentiable."""
        return torch.cumprod(1.0 - self.betas(), dim=0)

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp every parameter into its box (called after each upper-level step)."""
        for i, name in enumerate(self.param_names):
            if name in self.bounds:
                lo, hi = self.bounds[name]
                self.raw[i].clamp_(lo, hi)
        self._project_extra_()

    def _project_extra_(self) -> None:
        """Constraints between parameters (subclasses)."""


class _NormalisedTimeSchedule(NoiseSchedule):
    """Shared part of the cosine and sigmoid members of the family: ``alpha_bar`` from ``f`` on normalised time,
    normalised as Chen 2023 (``"chen"``, reaches pure noise) or as the official code (``"official"``)."""

    param_names = ("start", "end", "tau", "eps")
    min_gap = 1e-3
    normalisations = ("chen", "official")

    def __init__(self, *args, normalisation: str = "chen", **kwargs) -> None:
        if normalisation not in self.normalisations:
            raise ConfigError(f"schedule.normalisation must be one of {self.normalisations} (got {normalisation!r})")
        self.normalisation = normalisation
        super().__init__(*args, **kwargs)

    def options(self) -> dict[str, object]:
        return {"normalisation": self.normalisation}

    def _f(self, u: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def betas(self) -> torch.Tensor:
        start, end, eps = self.param("start"), self.param("end"), self.param("eps")

        def f(t: torch.Tensor) -> torch.Tensor:
            return self._f((t + eps) / (1.0 + eps))

        if self.normalisation == "chen":  # the constant 1/(f(start) - f(end)) cancels in the ratios of betas
            f_end = f(end)
            return betas_from_alpha_bar(lambda t: (f(t) - f_end).clamp_min(TINY), self.num_train_timesteps,
                                        start, end)
        return betas_from_alpha_bar(f, self.num_train_timesteps, start, end)

    @torch.no_grad()
    def _project_extra_(self) -> None:
        start, end = self.param_names.index("start"), self.param_names.index("end")
        self.raw[end].clamp_(min=float(self.raw[start]) + self.min_gap)


class CosineSchedule(_NormalisedTimeSchedule):
    """Cosine family: ``f(u) = cos(u * pi / 2) ** (2 tau)`` with ``u = (t' + eps) / (1 + eps)``.

    At ``(start, end, tau, eps) = (0, 1, 1, 0.008)`` this is the Nichol-Dhariwal schedule (diffusers'
    ``squaredcos_cap_v2``).
    """

    def _f(self, u: torch.Tensor) -> torch.Tensor:
        return torch.cos(u * (math.pi / 2)).clamp_min(TINY) ** (2.0 * self.param("tau"))


class SigmoidSchedule(_NormalisedTimeSchedule):
    """Sigmoid family of Chen 2023, Alg. 1, on the same normalised time as the cosine family.

    ``f(u) = (v_hi - sigmoid((z_lo + (z_hi - z_lo) u) / tau)) / (v_hi - v_lo)`` with
    ``v_lo = sigmoid(z_lo / tau)``, ``v_hi = sigmoid(z_hi / tau)``, the logit range ``(z_lo, z_hi) = (-3, 3)``
    (Chen's defaults), temperature ``tau`` and time offset ``eps``: ``u = (t' + eps) / (1 + eps)``.
    ``f`` falls from 1 at ``u = 0`` to 0 at ``u = 1``.
    """

    z_lo, z_hi = -3.0, 3.0

    def _f(self, u: torch.Tensor) -> torch.Tensor:
        tau = self.param("tau")
        v_lo = torch.sigmoid(self.z_lo / tau)
        v_hi = torch.sigmoid(self.z_hi / tau)
        return ((v_hi - torch.sigmoid((self.z_lo + (self.z_hi - self.z_lo) * u) / tau)) / (v_hi - v_lo)).clamp_min(TINY)


class LinearSchedule(NoiseSchedule):
    """DDPM's linear schedule (Ho et al. 2020): ``beta_t`` evenly spaced from ``beta_start`` to ``beta_end``."""

    param_names = ("beta_start", "beta_end")

    def betas(self) -> torch.Tensor:
        grid = torch.linspace(0.0, 1.0, self.num_train_timesteps, dtype=torch.float64)
        return self.param("beta_start") + (self.param("beta_end") - self.param("beta_start")) * grid
