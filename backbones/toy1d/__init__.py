"""``toy1d``: a tiny random family with the public checkpoints' shapes, for contract tests.

Its backbone (:mod:`.transformer`) puts the class token last, ties its head to the token
embeddings (a per-position bias, the whole vocabulary scored then sliced to K) and names its
attention ``query``/``key``/``value``; its tokenizer (:mod:`.tokenizer`) makes 16 1-D tokens
from a 32x32 grey image, K = 16. Two blocks of width 32, no weights: same seed, same modules.
Evaluated like Fashion-MNIST (its classes, classifier and references), with no token maps and
no trained method's weights, so Halton and KA-MIG's G_co refuse it and trained methods need
their weights named. The worked example of ``docs/ARCHITECTURE.md``, "Adding a backbone family".
"""

from __future__ import annotations

import torch
from migbench.backbones.toy import TOY_DATA
from migbench.backbones.toy1d.tokenizer import Tokenizer1D
from migbench.backbones.toy1d.transformer import Toy1DTransformer

from migbench.api import Stack


def toy1d(seed: int = 0) -> Stack:
    """Tiny random stack: 16 1-D tokens, K = 16, width 32, 2 blocks, class last, tied head."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        tokenizer = Tokenizer1D()
        backbone = Toy1DTransformer()
    return Stack(name="toy1d", tokenizer=tokenizer.eval().requires_grad_(False),
                 backbone=backbone.eval().requires_grad_(False), dataset=TOY_DATA,
                 weight_hashes={"toy1d": f"seed{seed}"})
