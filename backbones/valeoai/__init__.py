"""``valeoai``: valeoai's PyTorch MaskGIT reproduction, branch v1.0 (Besnier & Chen, arXiv 2310.14400).

Stacks: ``valeoai_maskgit_256`` (16x16 tokens) and ``valeoai_maskgit_512`` (32x32 tokens), each
the released :class:`~.mask_transformer.MaskTransformer` (768 wide, 24 blocks, 16 heads, class
token last, vocabulary 2026, head tied to the token embeddings with a per-position bias) over the
released taming VQGAN (:class:`~.taming_vqgan.TamingVQGAN`, f = 16, 1,024 codes), evaluated
against ImageNet; and ``valeoai_tiny``, the same modules tiny and random, for contract tests.

The released files are in :data:`CHECKPOINTS`; they enter through ``migbench fetch NAME`` (from
``llvictorll/Maskgit-pytorch`` on the Hugging Face hub) or ``migbench import NAME PATH``, and load
strictly under upstream's key names. ``random_weights=True`` builds a stack without them (seeded
random weights, recorded as such in ``weight_hashes``): for trying the pipeline, never for numbers.
"""

from __future__ import annotations

import dataclasses

from migbench.backbones.common.stacks import checkpoint_stack, tiny_stack
from migbench.backbones.valeoai.mask_transformer import MaskTransformer, MaskTransformerConfig
from migbench.backbones.valeoai.taming_vqgan import TamingVQGAN, TamingVQGANConfig

from migbench.api import Stack
from migbench.checkpoints import CheckpointSpec

HUB = "hf:llvictorll/Maskgit-pytorch/pretrained_maskgit"
LICENCE = "MIT (valeoai/Maskgit-pytorch LICENSE.txt)"
PAGE = "https://huggingface.co/llvictorll/Maskgit-pytorch/tree/main/pretrained_maskgit"

# The hub repository has one revision line, `main`, not pinned by upstream: the commit actually
# fetched and both sha256s are recorded at import and enter every run hash. Sizes and hashes are
# not pinned here because they could not be read from this machine (no network); the committed
# key listings identify the files by content instead.
CHECKPOINTS: tuple[CheckpointSpec, ...] = (
    CheckpointSpec(name="valeoai_maskgit_256", source=f"{HUB}/MaskGIT/MaskGIT_ImageNet_256.pth@main", licence=LICENCE,
                   container="model_state_dict", strip=("module.", "_orig_mod."),
                   listing="migbench.backbones.valeoai:keys/mask_transformer_256.json", manual=PAGE),
    CheckpointSpec(name="valeoai_maskgit_512", source=f"{HUB}/MaskGIT/MaskGIT_ImageNet_512.pth@main", licence=LICENCE,
                   container="model_state_dict", strip=("module.", "_orig_mod."),
                   listing="migbench.backbones.valeoai:keys/mask_transformer_512.json", manual=PAGE),
    CheckpointSpec(name="valeoai_vqgan", source=f"{HUB}/VQGAN/last.ckpt@main", licence=LICENCE,
                   container="state_dict", ignore=("loss.*",),
                   listing="migbench.backbones.valeoai:keys/taming_vqgan.json", manual=PAGE),
)


def _stack(name: str, image_size: int, checkpoint: str, random_weights: bool, seed: int = 0) -> Stack:
    """The transformer ``checkpoint`` at ``image_size`` over the VQGAN (files or random weights)."""
    return checkpoint_stack(name, lambda: (TamingVQGAN(TamingVQGANConfig(), image_size=image_size),
                                           MaskTransformer(MaskTransformerConfig(img_size=image_size))),
                            image_size, (checkpoint, "valeoai_vqgan"), random_weights, seed)


def valeoai_maskgit_256(random_weights: bool = False) -> Stack:
    """The released 256 px MaskGIT (``valeoai_maskgit_256``) over the released VQGAN: 256 tokens."""
    return _stack("valeoai_maskgit_256", 256, "valeoai_maskgit_256", random_weights)


def valeoai_maskgit_512(random_weights: bool = False) -> Stack:
    """The released 512 px MaskGIT (``valeoai_maskgit_512``) over the same VQGAN: 1,024 tokens."""
    return _stack("valeoai_maskgit_512", 512, "valeoai_maskgit_512", random_weights)


def valeoai_tiny(seed: int = 0) -> Stack:
    """Both modules at their tiny configurations, random (same seed, same weights): the family's
    contract-test stack. Its data is ImageNet's first classes at the tiny image size."""
    vq_config = TamingVQGANConfig.tiny()  # f = 2: 32 px -> 16 x 16 tokens of 64 codes
    transformer = dataclasses.replace(MaskTransformerConfig.tiny(), img_size=vq_config.resolution, downsample=2,
                                      codebook_size=vq_config.n_embed)
    return tiny_stack("valeoai_tiny", lambda: (TamingVQGAN(vq_config, image_size=vq_config.resolution),
                                               MaskTransformer(transformer)), vq_config.resolution, seed)
