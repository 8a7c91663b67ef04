"""Stacks: a tokenizer and a backbone that belong together, with their weight hashes.

``fmnist`` is the committed MaskGIT-trained Fashion-MNIST stack (the default everywhere);
``fmnist_emigm`` the same size trained with eMIGM's choices;
``toy`` is a tiny randomly initialised stack (fixed seed, no weights) for contract tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from migbench.backbones.fmnist import TOKENIZER, load_tokenizer, load_transformer
from migbench.backbones.transformer import MaskedTransformer, TransformerConfig
from migbench.backbones.vq_tokenizer import VQConfig, VQTokenizer

from migbench import weights


@dataclass
class Stack:
    """A tokenizer, a backbone, and the sha256 of every weight file they came from."""

    name: str
    tokenizer: VQTokenizer
    backbone: MaskedTransformer
    weight_hashes: dict[str, str] = field(default_factory=dict)
    image_channels: int = 1


def committed(backbone_name: str, stack_name: str) -> Stack:
    """A stack of committed weights: the Fashion-MNIST tokenizer and ``backbone_name``."""
    return Stack(name=stack_name, tokenizer=load_tokenizer(TOKENIZER),
                 backbone=load_transformer(backbone_name),
                 weight_hashes={n: weights.manifest_entry(n)["sha256"] for n in (TOKENIZER, backbone_name)})


def fmnist() -> Stack:
    """The default: ``fmnist_vq`` + ``fmnist_maskgit`` (MaskGIT recipe)."""
    return committed("fmnist_maskgit", "fmnist")


def fmnist_emigm() -> Stack:
    """``fmnist_vq`` + ``fmnist_emigm`` (eMIGM recipe: exp schedule, t >= 0.2, CFG with mask)."""
    return committed("fmnist_emigm", "fmnist_emigm")


def toy(seed: int = 0, codebook_size: int = 16, null_is_mask: bool = False) -> Stack:
    """Tiny random stack: 8x8 tokens, K=16, width 32, 2 blocks. Same seed, same weights."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        tokenizer = VQTokenizer(VQConfig(codebook_size=codebook_size, code_dim=8, channels=(8, 8, 8)))
        backbone = MaskedTransformer(TransformerConfig(codebook_size=codebook_size, width=32, depth=2,
                                                       heads=2, null_is_mask=null_is_mask))
    return Stack(name="toy", tokenizer=tokenizer.eval().requires_grad_(False),
                 backbone=backbone.eval().requires_grad_(False), weight_hashes={"toy": f"seed{seed}"})
