"""migbench: a comparative benchmark suite for masked image generation."""

__version__ = "0.1.0"

# Bump when a change alters what the sampler produces for an unchanged recipe and seed:
# every run hash includes it, so old results are recomputed rather than mixed with new ones.
SAMPLER_VERSION = 2
