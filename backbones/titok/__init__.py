"""``titok``: TiTok's 1-D tokenizers and class-conditional generators (bytedance/1d-tokenizer,
Yu et al., "An Image is Worth 32 Tokens for Reconstruction and Generation", NeurIPS 2024), the
backbones of KA-MIG's TiTok rows.

Stacks (256 px, ImageNet's 1,000 classes, K = 4,096 codes in one dimension):

- ``titok_l32``: the L-32 tokenizer (32 tokens) and its :class:`~.image_bert.ImageBert` generator;
- ``titok_b64``: the B-64 tokenizer (64 tokens) and its ImageBert generator;
- ``titok_s128``: the S-128 tokenizer (128 tokens) and its :class:`~.uvit_bert.UViTBert` generator;
- ``titok_tiny``: the tiny tokenizer (16 tokens of 64 codes, 32 px) and a tiny ImageBert, random,
  for the contract tests (the family's 1-D stack in CI).

The tokenizer (:class:`~.tokenizer.TiTokTokenizer`) decodes through Google's MaskGIT VQGAN
decoder (the shared :mod:`~migbench.backbones.common.maskgit_vqgan`), so images are in [0, 1].
Files: the raw state dicts of ``fun-research/TiTok`` (``migbench fetch titok_b64_tokenizer
titok_b64_generator``), or the ``PyTorchModelHubMixin`` folders of ``yucornetto/*_imagenet``
(``config.json`` + ``model.safetensors``: ``migbench import NAME FOLDER``, the config checked
against the module's); both load strictly under upstream's names. Sample with the released
settings through the presets ``titok_l32``, ``titok_b64`` and ``titok_s128``
(:mod:`migbench.methods.maskgit`). ``random_weights=True`` builds a stack with seeded random
weights (for trying the pipeline, never for numbers).
"""

from __future__ import annotations

import dataclasses

from migbench.backbones.common.stacks import checkpoint_stack, tiny_stack
from migbench.backbones.titok.image_bert import ImageBert, ImageBertConfig
from migbench.backbones.titok.tokenizer import TiTokTokenizer, TiTokTokenizerConfig
from migbench.backbones.titok.uvit_bert import UViTBert, UViTBertConfig
from torch import nn

from migbench.api import Stack
from migbench.checkpoints import CheckpointSpec
from migbench.config import RANDOM_PARTS

HUB = "hf:fun-research/TiTok"
REVISION = "main"
LICENCE = "Apache-2.0 (bytedance/1d-tokenizer LICENSE; fun-research/TiTok model card)"
VARIANTS = {  # name: (tokenizer size, latent tokens, generator kind, hidden, layers)
    "l32": ("large", 32, "ViT", 768, 24),
    "b64": ("base", 64, "ViT", 768, 24),
    "s128": ("small", 128, "UViT", 1024, 20),
}


def _specs(variant: str) -> tuple[CheckpointSpec, CheckpointSpec]:
    """The tokenizer and generator files of ``variant``, with the values of the hub-mixin
    ``config.json`` that must agree with our module."""
    size, tokens, kind, hidden, layers = VARIANTS[variant]
    listing = "migbench.backbones.titok:keys/{}_" + variant + ".json"
    page = "https://huggingface.co/yucornetto/{}_titok_" + variant + "_imagenet"
    vq = (("model.vq_model.vit_enc_model_size", size), ("model.vq_model.vit_dec_model_size", size),
          ("model.vq_model.num_latent_tokens", tokens), ("model.vq_model.codebook_size", 4096),
          ("model.vq_model.token_size", 12))
    generator = (("model.vq_model.num_latent_tokens", tokens), ("model.vq_model.codebook_size", 4096),
                 ("model.generator.model_type", kind), ("model.generator.hidden_size", hidden),
                 ("model.generator.num_hidden_layers", layers), ("model.generator.condition_num_classes", 1000))
    return (
        CheckpointSpec(name=f"titok_{variant}_tokenizer", source=f"{HUB}/tokenizer_titok_{variant}.bin@{REVISION}",
                       licence=LICENCE, listing=listing.format("tokenizer"), hub_config=vq,
                       manual=f"{page.format('tokenizer')} (the PyTorchModelHubMixin folder) or "
                              f"https://huggingface.co/fun-research/TiTok (tokenizer_titok_{variant}.bin)"),
        CheckpointSpec(name=f"titok_{variant}_generator", source=f"{HUB}/generator_titok_{variant}.bin@{REVISION}",
                       licence=LICENCE, listing=listing.format("generator"), hub_config=generator,
                       ignore=("model.embeddings.position_ids", "model.embeddings.token_type_ids"),
                       manual=f"{page.format('generator')} (the PyTorchModelHubMixin folder) or "
                              f"https://huggingface.co/fun-research/TiTok (generator_titok_{variant}.bin)"),
    )


CHECKPOINTS: tuple[CheckpointSpec, ...] = tuple(spec for variant in VARIANTS for spec in _specs(variant))

# No TiTok adapter of KA-MIG or self-guidance was released: random-weights stacks take seeded
# random parts, real stacks the fine-tune `migbench fit ka_mig --backbone titok_b64` publishes
# (refused by name until it exists).
RANDOM_METHOD_PARTS = {method: {"weights": RANDOM_PARTS} for method in ("self_guidance", "token_critic")} | {
    "ka_mig": {"weights": RANDOM_PARTS, "graphs": RANDOM_PARTS}}


def _generator(variant: str) -> nn.Module:
    if variant == "s128":
        return UViTBert(UViTBertConfig.s128())
    return ImageBert(ImageBertConfig.l32() if variant == "l32" else ImageBertConfig.b64())


def _tokenizer_config(variant: str) -> TiTokTokenizerConfig:
    return {"l32": TiTokTokenizerConfig.l32, "b64": TiTokTokenizerConfig.b64, "s128": TiTokTokenizerConfig.s128}[variant]()


def _stack(variant: str, random_weights: bool, seed: int) -> Stack:
    """TiTok ``variant``'s generator over its tokenizer (files or random weights)."""
    return checkpoint_stack(f"titok_{variant}",
                            lambda: (TiTokTokenizer(_tokenizer_config(variant)), _generator(variant)),
                            256, (f"titok_{variant}_generator", f"titok_{variant}_tokenizer"), random_weights, seed,
                            RANDOM_METHOD_PARTS if random_weights else {
                                "ka_mig": {"weights": f"titok_{variant}_ka_mig",
                                           "graphs": f"titok_{variant}_ka_mig_graphs"}})


def titok_l32(random_weights: bool = False, seed: int = 0) -> Stack:
    """TiTok-L-32: 32 tokens, the ImageBert generator (released gFID 2.77; preset ``titok_l32``)."""
    return _stack("l32", random_weights, seed)


def titok_b64(random_weights: bool = False, seed: int = 0) -> Stack:
    """TiTok-B-64: 64 tokens, the ImageBert generator (gFID 2.48; preset ``titok_b64``)."""
    return _stack("b64", random_weights, seed)


def titok_s128(random_weights: bool = False, seed: int = 0) -> Stack:
    """TiTok-S-128: 128 tokens, the UViTBert generator (gFID 1.97; preset ``titok_s128``)."""
    return _stack("s128", random_weights, seed)


def titok_tiny(seed: int = 0) -> Stack:
    """The tiny tokenizer with 16 tokens of 64 codes (32 px) and a tiny ImageBert over them,
    random (same seed, same weights): the family's contract-test stack, ImageNet's first classes;
    initialised wider than upstream's std 0.02 so the class token moves the logits enough for the
    contract tests to see it."""
    tokenizer = dataclasses.replace(TiTokTokenizerConfig.tiny(), num_latent_tokens=16)
    generator = dataclasses.replace(ImageBertConfig.tiny(), image_seq_len=16, codebook_size=tokenizer.codebook_size,
                                    initializer_range=0.3)
    return tiny_stack("titok_tiny", lambda: (TiTokTokenizer(tokenizer), ImageBert(generator)), 32, seed)
