"""TiTok's 1-D tokenizer (Yu et al. 2024, "An Image is Worth 32 Tokens for Reconstruction and
Generation") with upstream's state-dict names and our forward.

Upstream: bytedance/1d-tokenizer @ 942a96f, ``modeling/titok.py`` ``TiTok`` with
``finetune_decoder=True`` (the released stage-2 tokenizers, ``configs/infer/TiTok/titok_*.yaml``),
its ``TiTokEncoder`` / ``TiTokDecoder`` (``modeling/modules/blocks.py``, ``is_legacy`` True),
``VectorQuantizer`` with ``use_l2_norm`` and the MaskGIT-VQGAN ``pixel_quantize`` / ``pixel_decoder``
it hard-codes. The names and shapes of :meth:`TiTokTokenizer.state_dict` are upstream's exactly (in
order), so fun-research/TiTok's raw ``tokenizer_titok_{l32,b64,s128}.bin`` load strictly:

=====  ===========  =====  ============  ====  ===========  ==============
name   enc / dec    L      width/layers  keys  parameters   listing
=====  ===========  =====  ============  ====  ===========  ==============
l32    large/large  32     1024/24/16    692   641,054,735  tokenizer_l32
b64    base/base    64     768/12/12     404   204,814,095  tokenizer_b64
s128   small/small  128    512/8/8       308   83,674,639   tokenizer_s128
=====  ===========  =====  ============  ====  ===========  ==============

(each includes the 1024 x 256 pixel codebook and the 88-tensor pixel decoder: 89 tensors,
30,740,483 parameters).

Forward, images (B, 3, S, S) in [0, 1] -> ids (B, L) -> images; g_e = S / p_enc, g = S / p_dec::

    encoder   x = [class, patch_embed(images) (B, g_e^2, W)] + positional_embedding
              x = ln_pre([x, latent_tokens + latent_token_positional_embedding])   (B, 1 + g_e^2 + L, W)
              x = blocks(x)                  pre-LN CLIP blocks: x + attn(ln_1 x), x + mlp(ln_2 x)
              h = ln_post(x[:, 1 + g_e^2:])  (B, L, W), then *reshaped* (not permuted) to (B, W, L, 1)
              z = conv_out(h) (1x1)          (B, D, L, 1): z_l = W_out h[:, :, l] + b_out, as (B, L, D)
    quantise  id_l = argmin_k ||z_l/|z_l| - e_k/|e_k| ||^2   (D = 12, K = 4096, float32)
    decoder   q_l = e_{id_l} / |e_{id_l}|                     (B, L, D)
              x = ln_pre([[class, mask_token x g^2] + positional_embedding,
                          decoder_embed(q) + latent_token_positional_embedding])
              x = blocks(x); h = ln_post(x[:, 1:1 + g^2]) -> (B, W, g, g)
              logits = ffn(h) = conv1x1(tanh(conv1x1(h)))    (B, 1024, g, g), MaskGIT-VQGAN codes
              y = pixel_decoder(sum_c softmax_c(logits) pixel_quantize.embedding[c])   (B, 3, S, S)

The "legacy" reshape is upstream's: it feeds ``conv_out`` the memory of ``ln_post``'s (B, L, W)
output as if it were (B, W, L, 1), so column l that the 1x1 conv reads holds features l, l + L,
l + 2L, ... of every latent token (W / L from each; L divides W in all sizes); the released
weights are trained that way. Attention is
``nn.MultiheadAttention``'s parameters and map (stacked ``in_proj``, scale 1/sqrt(W / heads)),
LayerNorm eps 1e-5, GELU the exact erf form. ``pixel_decoder`` is the shared Google MaskGIT VQGAN
:class:`~migbench.backbones.common.maskgit_vqgan.Decoder` (MAGE's module names); its state dict
carries open-muse's names, which are TiTok's (``modules/maskgit_vqgan.py`` is open-muse's file),
through the rename-only :func:`to_open_muse` / :func:`from_open_muse` applied by state-dict hooks.

Ranges (upstream's): ``encode`` takes images in [0, 1]; ``decode_raw`` is upstream's
``decode_tokens``, not clamped (nominally [0, 1]); ``decode`` clamps it to [0, 1] as upstream's
``demo_util.sample_fn`` and ``PretrainedTokenizer.decode`` do before saving images.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from migbench.backbones.common.attention import multi_head_attention
from migbench.backbones.common.maskgit_vqgan import (
    Decoder,
    MaskGitVQGANConfig,
    from_open_muse,
    to_open_muse,
)
from migbench.backbones.common.vq import Quantizer, check_ids, check_images
from torch import nn

UPSTREAM = "bytedance/1d-tokenizer 942a96fbdd873780179d1b78d5462911528bf8c8 modeling/titok.py TiTok"
# blocks.py's width / num_layers / num_heads tables; "tiny" is the golden fixture's insertion.
MODEL_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (32, 2, 2), "small": (512, 8, 8), "base": (768, 12, 12), "large": (1024, 24, 16)}
PIXEL_CODES = 1024  # the legacy decoder's ffn predicts logits over the 1024 MaskGIT-VQGAN codes (hard-coded)


@dataclass(frozen=True)
class TiTokTokenizerConfig:
    """Architecture in upstream's ``model.vq_model`` names (``image_size`` is ``crop_size``); the
    defaults are TiTok-L-32 (``titok_l32.yaml``). ``pixel_vqgan`` is the MaskGIT VQGAN whose
    codebook and decoder ``TiTok.__init__`` hard-codes (1024 x 256, channel_mult (1,1,2,2,4)).
    The decoder's token grid g = image_size / vit_dec_patch_size must be what the pixel decoder
    upsamples to image_size, so vit_dec_patch_size equals its factor (16 at full size)."""

    vit_enc_model_size: str = "large"
    vit_dec_model_size: str = "large"
    vit_enc_patch_size: int = 16
    vit_dec_patch_size: int = 16
    num_latent_tokens: int = 32
    codebook_size: int = 4096
    token_size: int = 12
    image_size: int = 256
    pixel_vqgan: MaskGitVQGANConfig = field(default_factory=MaskGitVQGANConfig)

    def __post_init__(self) -> None:
        for size in (self.vit_enc_model_size, self.vit_dec_model_size):
            if size not in MODEL_SIZES:
                raise ValueError(f"model size must be one of {', '.join(MODEL_SIZES)}, got {size!r}")
        for patch in (self.vit_enc_patch_size, self.vit_dec_patch_size):
            if patch <= 0 or self.image_size % patch:
                raise ValueError(f"image_size {self.image_size} must be a multiple of the patch size {patch}")
        if self.vit_dec_patch_size != self.pixel_vqgan.factor:
            raise ValueError(f"vit_dec_patch_size {self.vit_dec_patch_size} must equal the pixel decoder's "
                             f"factor {self.pixel_vqgan.factor}")
        if self.pixel_vqgan.n_embed != PIXEL_CODES:
            raise ValueError(f"the pixel codebook must have {PIXEL_CODES} codes, got {self.pixel_vqgan.n_embed}")

    @classmethod
    def l32(cls) -> TiTokTokenizerConfig:
        """TiTok-L-32: ViT-L encoder and decoder, 32 tokens (``titok_l32.yaml``)."""
        return cls()

    @classmethod
    def b64(cls) -> TiTokTokenizerConfig:
        """TiTok-B-64: ViT-B encoder and decoder, 64 tokens (``titok_b64.yaml``)."""
        return cls(vit_enc_model_size="base", vit_dec_model_size="base", num_latent_tokens=64)

    @classmethod
    def s128(cls) -> TiTokTokenizerConfig:
        """TiTok-S-128: ViT-S encoder and decoder, 128 tokens (``titok_s128.yaml``)."""
        return cls(vit_enc_model_size="small", vit_dec_model_size="small", num_latent_tokens=128)

    @classmethod
    def tiny(cls) -> TiTokTokenizerConfig:
        """The golden fixture's: 32 px, encoder patch 8 (4 x 4), decoder patch 2 (16 x 16 mask
        tokens), width 32, 2 blocks, 2 heads, 8 tokens of a 64-code codebook; pixel decoder
        width 32, ch_mult (1, 1) (factor 2), codes of dimension 8 (269,199 parameters)."""
        pixel = MaskGitVQGANConfig(z_channels=8, ch=32, ch_mult=(1, 1))
        return cls(vit_enc_model_size="tiny", vit_dec_model_size="tiny", vit_enc_patch_size=8, vit_dec_patch_size=2,
                   num_latent_tokens=8, codebook_size=64, image_size=32, pixel_vqgan=pixel)


class SelfAttention(nn.Module):
    """``nn.MultiheadAttention``'s parameters and map, our forward: (B, N, W) -> (B, N, W).

    ``in_proj_weight`` (3W, W) stacks [W_q; W_k; W_v], ``in_proj_bias`` (3W,) likewise;
    out_proj(softmax(q k^T / sqrt(W / heads)) v) per head. Initialised as torch initialises
    ``nn.MultiheadAttention`` (Xavier-uniform in-projection, zero biases)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(3 * width, width)))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        return self.out_proj(multi_head_attention(q, k, v, self.heads))


class ResidualAttentionBlock(nn.Module):
    """Upstream's CLIP block, pre-LN: x + attn(ln_1(x)), then x + mlp(ln_2(x)) with
    ``mlp`` = ``c_fc`` (W -> 4W), exact GELU, ``c_proj`` (4W -> W). (B, N, W) -> (B, N, W)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            [("c_fc", nn.Linear(width, 4 * width)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(4 * width, width))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def _embedding(*shape: int) -> nn.Parameter:
    """A learned table drawn as upstream draws it: width^-1/2 N(0, 1) (width = the last dim)."""
    return nn.Parameter(shape[-1] ** -0.5 * torch.randn(*shape))


class Transformer(nn.Module):
    """What the encoder and decoder share: their input embedding (``embed``: one module, by
    name, registered first as upstream does), ``ln_pre``, the ``transformer.{i}`` blocks and
    ``ln_post`` (applied by the caller to the positions it keeps). (B, N, W) -> (B, N, W)."""

    def __init__(self, size: str, **embed: nn.Module) -> None:
        super().__init__()
        self.width, layers, heads = MODEL_SIZES[size]
        for name, module in embed.items():
            self.add_module(name, module)
        self.ln_pre = nn.LayerNorm(self.width)
        self.transformer = nn.ModuleList(ResidualAttentionBlock(self.width, heads) for _ in range(layers))
        self.ln_post = nn.LayerNorm(self.width)

    def blocks(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_pre(x)
        for block in self.transformer:
            x = block(x)
        return x


class Encoder(Transformer):
    """Upstream's ``TiTokEncoder`` (legacy): images (B, 3, S, S), latent_tokens (L, W) ->
    z (B, L, D) before quantisation (upstream's (B, D, 1, L), the same numbers)."""

    def __init__(self, c: TiTokTokenizerConfig) -> None:
        width, patch = MODEL_SIZES[c.vit_enc_model_size][0], c.vit_enc_patch_size
        super().__init__(c.vit_enc_model_size, patch_embed=nn.Conv2d(3, width, patch, stride=patch))
        grid = c.image_size // patch
        self.class_embedding = _embedding(1, width)
        self.positional_embedding = _embedding(grid ** 2 + 1, width)
        self.latent_token_positional_embedding = _embedding(c.num_latent_tokens, width)
        self.conv_out = nn.Conv2d(self.width, c.token_size, 1)

    def forward(self, images: torch.Tensor, latent_tokens: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        patches = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, g_e^2, W)
        x = torch.cat([self.class_embedding.expand(b, 1, -1), patches], dim=1) + self.positional_embedding
        latents = (latent_tokens + self.latent_token_positional_embedding).expand(b, -1, -1)
        x = self.blocks(torch.cat([x, latents], dim=1))
        num_latents = latent_tokens.shape[0]
        h = self.ln_post(x[:, -num_latents:]).reshape(b, self.width, num_latents, 1)  # legacy: a reshape
        return self.conv_out(h).reshape(b, -1, num_latents).transpose(1, 2)


class TokenDecoder(Transformer):
    """Upstream's ``TiTokDecoder`` (legacy): unit-norm code vectors q (B, L, D) -> logits
    (B, 1024, g, g) over the MaskGIT-VQGAN codes at the g x g grid of mask tokens."""

    def __init__(self, c: TiTokTokenizerConfig) -> None:
        width = MODEL_SIZES[c.vit_dec_model_size][0]
        super().__init__(c.vit_dec_model_size, decoder_embed=nn.Linear(c.token_size, width))
        self.grid = c.image_size // c.vit_dec_patch_size
        self.class_embedding = _embedding(1, width)
        self.positional_embedding = _embedding(self.grid ** 2 + 1, width)
        self.mask_token = _embedding(1, 1, width)
        self.latent_token_positional_embedding = _embedding(c.num_latent_tokens, width)
        self.ffn = nn.Sequential(nn.Conv2d(self.width, 2 * self.width, 1), nn.Tanh(),
                                 nn.Conv2d(2 * self.width, PIXEL_CODES, 1))

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        b, g = q.shape[0], self.grid
        queries = torch.cat([self.class_embedding.expand(b, 1, -1), self.mask_token.expand(b, g * g, -1)], dim=1)
        latents = self.decoder_embed(q) + self.latent_token_positional_embedding
        x = self.blocks(torch.cat([queries + self.positional_embedding, latents], dim=1))
        h = self.ln_post(x[:, 1:1 + g * g]).transpose(1, 2).reshape(b, self.width, g, g)
        return self.ffn(h)


class L2Codebook(nn.Module):
    """Upstream's ``VectorQuantizer(use_l2_norm=True)`` at inference: the codebook ``embedding``
    (K, D); latents and codes are compared on the unit sphere, and the decoder reads unit-norm rows."""

    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, dim)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """ids (M,) of argmin_k ||z/|z| - e_k/|e_k| ||^2 for z (M, D), in float32 (upstream's formula)."""
        z, e = F.normalize(z.float(), dim=-1), F.normalize(self.embedding.weight.float(), dim=-1)
        distance = z.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * z @ e.t()
        return distance.argmin(dim=1)

    def entries(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> unit-norm code vectors (B, L, D)."""
        return F.normalize(self.embedding(ids.long()), dim=-1)


def _save_open_muse_names(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, *_: object) -> None:
    """State-dict post-hook: the keys under ``prefix`` (this module's, the last ones written)
    renamed in place, in order, to open-muse's names."""
    ours = [key for key in state if key.startswith(prefix)]
    renamed = to_open_muse({key.removeprefix(prefix): state.pop(key) for key in ours})
    state.update((prefix + key, value) for key, value in renamed.items())


def _load_open_muse_names(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, *_: object) -> None:
    """Load pre-hook: the incoming keys under ``prefix`` renamed from open-muse's names to ours."""
    theirs = [key for key in state if key.startswith(prefix)]
    renamed = from_open_muse({key.removeprefix(prefix): state.pop(key) for key in theirs})
    state.update((prefix + key, value) for key, value in renamed.items())


class PixelDecoder(Decoder):
    """The shared MaskGIT-VQGAN :class:`Decoder`, whose ``state_dict`` and ``load_state_dict``
    use TiTok's (= open-muse's) names: ``mid.{0,1}`` for ``mid.block_{1,2}`` and
    ``up.i.upsample_conv`` for ``up.i.upsample.conv``; ``named_parameters`` keeps MAGE's."""

    def __init__(self, config: MaskGitVQGANConfig) -> None:
        super().__init__(config)
        self.register_state_dict_post_hook(_save_open_muse_names)
        self.register_load_state_dict_pre_hook(_load_open_muse_names)


class TiTokTokenizer(nn.Module):
    """The tokenizer: ``encode`` images (B, 3, S, S) in [0, 1] -> ids (B, L); ``decode`` ids ->
    images in [0, 1]. ``token_shape`` is (L,): 1-D tokens, no spatial layout.

    Initialisation (for seeded random weights): the embeddings and ``latent_tokens`` as upstream
    draws them, every other module torch's default."""

    def __init__(self, config: TiTokTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.latent_tokens = _embedding(config.num_latent_tokens, MODEL_SIZES[config.vit_enc_model_size][0])
        self.encoder = Encoder(config)
        self.decoder = TokenDecoder(config)
        self.quantize = L2Codebook(config.codebook_size, config.token_size)
        self.pixel_quantize = Quantizer(PIXEL_CODES, config.pixel_vqgan.z_channels)
        self.pixel_decoder = PixelDecoder(config.pixel_vqgan)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def token_shape(self) -> tuple[int, ...]:
        """1-D: L latent tokens."""
        return (self.config.num_latent_tokens,)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.config.image_size, self.config.image_size)

    def describe(self) -> dict[str, object]:
        return {"kind": "titok_tokenizer", **asdict(self.config), "upstream": UPSTREAM}

    @torch.no_grad()
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) in [0, 1] -> encoder output z (B, L, D) before quantisation (not
        normalised), in the module's dtype."""
        check_images(images, self.image_shape)
        return self.encoder(images.to(self.latent_tokens.dtype), self.latent_tokens)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) in [0, 1] -> ids (B, L) int64 (upstream's ``min_encoding_indices``
        (B, 1, L) without its singleton axis)."""
        z = self.encode_latents(images)
        return self.quantize.nearest(z.reshape(-1, z.shape[-1])).reshape(z.shape[:2])

    @torch.no_grad()
    def decode_raw(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> pixel-decoder output (B, 3, S, S) in the module's dtype, nominally in
        [0, 1] and not clamped (upstream's ``decode_tokens``)."""
        check_ids(ids, self.config.num_latent_tokens, self.codebook_size)
        logits = self.decoder(self.quantize.entries(ids))  # (B, 1024, g, g)
        latents = torch.einsum("bchw,cd->bdhw", logits.softmax(dim=1), self.pixel_quantize.embedding.weight)
        return self.pixel_decoder(latents)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> images (B, 3, S, S) float32, the decoder output clamped to [0, 1]."""
        return self.decode_raw(ids).float().clamp(0.0, 1.0)
