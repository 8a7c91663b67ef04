"""``openmuse``: Google's MaskGIT (Chang et al., CVPR 2022) in UnlockMGM's copy of open-muse's
layout, the backbone of the self-guidance paper's rows (Hur et al., NeurIPS 2024).

Stacks: ``maskgit_256`` and ``maskgit_512`` (16x16 and 32x32 tokens): the transformer
(:class:`~.maskgit_transformer.MaskGitTransformer`: post-LN, class token first, vocabulary 2025
with [MASK] 2024 and no null class) over Google's MaskGIT VQGAN
(:class:`~migbench.backbones.common.maskgit_vqgan.MaskGitVQGAN`, read from open-muse's names);
and ``openmuse_tiny``, the same modules tiny and random, for contract tests.

Files: the transformer is the backbone part of the self-guidance release (the whole fine-tuned
model, its backbone frozen: Google's weights as UnlockMGM converted them;
``migbench.methods.self_guidance.release``), the VQGAN open-muse's conversion on the hub.
``random_weights=True`` builds the stacks with seeded random weights (and ``random`` method parts).
"""

from __future__ import annotations

import dataclasses

from migbench.backbones.common.maskgit_vqgan import MaskGitVQGAN, MaskGitVQGANConfig, from_open_muse
from migbench.backbones.common.stacks import checkpoint_stack, tiny_stack
from migbench.backbones.openmuse.maskgit_transformer import (
    MaskGitTransformer,
    MaskGitTransformerConfig,
)

from migbench.api import Stack
from migbench.checkpoints import CheckpointSpec
from migbench.config import RANDOM_PARTS

VQGAN_PAGE = "https://huggingface.co/openMUSE/maskgit-vqgan-imagenet-f16-256"
CHECKPOINTS: tuple[CheckpointSpec, ...] = (
    CheckpointSpec(name="openmuse_maskgit_vqgan", source="hf:openMUSE/maskgit-vqgan-imagenet-f16-256/pytorch_model.bin@main",
                   licence="Apache-2.0 (Google's MaskGIT weights, converted by open-muse)",
                   listing="migbench.backbones.common:keys/maskgit_vqgan_open_muse.json",
                   manual=f"{VQGAN_PAGE} (its weights file; or UnlockMGM's scripts/convert_maskgit_vqgan.py output)"),
)
BACKBONES = {256: "unlockmgm_maskgit_256", 512: "unlockmgm_maskgit_512"}  # methods/self_guidance/release.py
ADAPTERS = {256: "unlockmgm_toast_256", 512: "unlockmgm_toast_512"}


def _stack(size: int, random_weights: bool, seed: int) -> Stack:
    """The transformer at ``size`` px over the VQGAN (files, the VQGAN's renamed from open-muse's
    names, or random weights)."""
    return checkpoint_stack(
        f"maskgit_{size}", lambda: (MaskGitVQGAN(MaskGitVQGANConfig(), image_size=size),
                                    MaskGitTransformer(MaskGitTransformerConfig(img_size=size))),
        size, (BACKBONES[size], "openmuse_maskgit_vqgan"), random_weights, seed,
        {method: {"weights": RANDOM_PARTS} for method in ("self_guidance", "token_critic")} if random_weights
        else {"self_guidance": {"weights": ADAPTERS[size]}}, tokenizer_state=from_open_muse)


def maskgit_256(random_weights: bool = False, seed: int = 0) -> Stack:
    """Google's MaskGIT at 256 px (the self-guidance release's backbone part) over its VQGAN."""
    return _stack(256, random_weights, seed)


def maskgit_512(random_weights: bool = False, seed: int = 0) -> Stack:
    """Google's MaskGIT at 512 px (1,024 tokens) over the same VQGAN."""
    return _stack(512, random_weights, seed)


def openmuse_tiny(seed: int = 0) -> Stack:
    """Both modules tiny and random (same seed, same weights): 32 px -> 16x16 tokens of 64
    codes, ImageNet's first classes; initialised wider than upstream's std 0.02 so the class
    token moves the logits enough for the contract tests to see it."""
    transformer = dataclasses.replace(MaskGitTransformerConfig.tiny(), img_size=32, downsample=2, codebook_size=64,
                                      initializer_range=0.3)
    return tiny_stack("openmuse_tiny", lambda: (MaskGitVQGAN(MaskGitVQGANConfig.tiny(), image_size=32),
                                                MaskGitTransformer(transformer)), 32, seed)
