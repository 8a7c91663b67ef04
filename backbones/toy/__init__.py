"""``toy``: a tiny randomly initialised stack of the Fashion-MNIST family's modules (fixed seed, no
weights) for contract tests: 8x8 tokens, K = 16, width 32, 2 blocks, class token first, linear head."""

from __future__ import annotations

from dataclasses import replace

import torch
from migbench.backbones.fmnist import FASHION_MNIST
from migbench.backbones.fmnist.transformer import MaskedTransformer, TransformerConfig
from migbench.backbones.fmnist.vq_tokenizer import VQConfig, VQTokenizer

from migbench.api import Stack

TOY_DATA = replace(FASHION_MNIST, token_maps=None)  # evaluated like Fashion-MNIST; no token maps of its own


def toy(seed: int = 0, codebook_size: int = 16, null_is_mask: bool = False) -> Stack:
    """Tiny random stack: 8x8 tokens, K=16, width 32, 2 blocks. Same seed, same weights."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        tokenizer = VQTokenizer(VQConfig(codebook_size=codebook_size, code_dim=8, channels=(8, 8, 8)))
        backbone = MaskedTransformer(TransformerConfig(codebook_size=codebook_size, width=32, depth=2,
                                                       heads=2, null_is_mask=null_is_mask))
    return Stack(name="toy", tokenizer=tokenizer.eval().requires_grad_(False),
                 backbone=backbone.eval().requires_grad_(False), dataset=TOY_DATA,
                 weight_hashes={"toy": f"seed{seed}"})
