"""bilevel-diffusion: reference implementation of "A First-order Generative Bilevel Optimization Framework for
Diffusion Models" (Xiao et al., ICML 2025, arXiv 2502.08808)."""

__version__ = "0.1.0"
