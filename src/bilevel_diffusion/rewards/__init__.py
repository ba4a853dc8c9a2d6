"""Reward models of Scenario A at paper scale (``configs/reward/*.yaml``): images in [-1, 1] -> one value per image."""

from bilevel_diffusion.rewards.base import ImageReward

__all__ = ["ImageReward"]
