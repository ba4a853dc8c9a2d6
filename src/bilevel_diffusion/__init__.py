"""bilevel-diffusion: reference implementation of "A First-order Generative Bilevel Optimization Framework for
Diffusion Models" (Xiao et al., ICML 2025, arXiv 2502.08808)."""

__version__ = "0.1.0"


def _register_resolvers() -> None:
    """``${tiny_sd:PATH}`` in ``configs/model/tiny.yaml``: PATH, with the tiny models built there on first use."""
    from omegaconf import OmegaConf

    def tiny_sd(path: str) -> str:
        from bilevel_diffusion.models.tiny_sd import ensure

        return ensure(path)

    if not OmegaConf.has_resolver("tiny_sd"):
        OmegaConf.register_new_resolver("tiny_sd", tiny_sd)


_register_resolvers()
