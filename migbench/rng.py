"""Randomness that does not depend on how work is split.

The sample index space [0, n) is cut into fixed-size batches; batch j draws *all* its noise
from ``batch_generator(seed, j)``. Whichever process runs batch j, and whatever ran before it,
batch j's samples are the same (DESIGN section 7).
"""

from __future__ import annotations

import torch


def batch_seed(seed: int, batch_index: int) -> int:
    """A 63-bit seed derived from (seed, batch index) by a fixed integer mix (splitmix64)."""
    x = (seed * 0x9E3779B97F4A7C15 + batch_index + 1) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) & 0x7FFFFFFFFFFFFFFF


def batch_generator(seed: int, batch_index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of batch ``batch_index`` of a run with ``seed``, on ``device``."""
    return torch.Generator(device=device).manual_seed(batch_seed(seed, batch_index))


def gumbel(shape: torch.Size | tuple[int, ...], generator: torch.Generator,
           device: torch.device | str) -> torch.Tensor:
    """Standard Gumbel noise -log(-log U), U ~ Uniform(0, 1), float32."""
    u = torch.rand(shape, generator=generator, device=device)
    return -torch.log(-torch.log(u.clamp_(1e-20, 1.0 - 1e-7)))
