"""``upper_estimator=weighted_sum``: the scalarisation baseline (paper Table 1): no upper level, guide once with
``r2 + weight * r1`` at a fixed KL strength ``lambda``."""

from __future__ import annotations

from bilevel_diffusion.errors import ConfigError


class WeightedSum:
    """Guidance reward ``r2 + weight * r1`` at strength ``1/lam`` (the official scripts used lambda = 1)."""

    def __init__(self, name: str = "weighted_sum", weight: float = 1.0, lam: float = 1.0) -> None:
        if lam <= 0 or weight < 0:
            raise ConfigError(f"upper_estimator=weighted_sum needs lam > 0 and weight >= 0 (got {lam}, {weight})")
        self.name, self.weight, self.lam = name, float(weight), float(lam)
