"""Noise schedules (config group ``schedule``)."""

from bilevel_diffusion.schedules.family import CosineSchedule, LinearSchedule, NoiseSchedule, SigmoidSchedule

__all__ = ["CosineSchedule", "LinearSchedule", "NoiseSchedule", "SigmoidSchedule"]
