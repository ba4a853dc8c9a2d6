"""Worked examples of using your own reward, upper estimator and model (README, "Use your own ...")."""
