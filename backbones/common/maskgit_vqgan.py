"""The Google MaskGIT VQGAN (Chang et al. 2022), as MAGE released it and AutoNAT uses it.

f = 16 at full size: a 256x256 image <-> a 16x16 grid of ids from 1,024 codes of dimension 256.
State-dict names are MAGE's: ImprovedNAT's ``taming.models.vqgan.VQModel`` as its ``get_model``
builds it from ``configs/vq-f16-jax.yaml`` (Encoder/Decoder from MAGE's modified taming
``diffusionmodules.model``) and strictly loads ``vqgan_jax_strongaug.ckpt`` into; the forward is
ours and computes what upstream's ``encode`` / ``decode_code`` compute. open-muse's ``MaskGitVQGAN``
(and TiTok's ``modules/maskgit_vqgan.py``, the same code) is the same network under other names:
:func:`to_open_muse` / :func:`from_open_muse` rename between the two and change nothing else.

Differences from the taming VQGAN (``backbones/valeoai/taming_vqgan.py``), all Google's:

- no attention anywhere (the yaml's ``attn_resolutions`` is ignored upstream), no ``quant_conv``
  / ``post_quant_conv``: the encoder's ``z_channels`` output is quantised directly;
- ResnetBlock: ``h = conv2(swish(norm2(conv1(swish(norm1(x))))))``, then ``x' = x + h`` when
  the width is kept and ``x' = nin_shortcut(h) + h`` when it changes, the 1x1 out->out
  ``nin_shortcut`` applied to the block *output* (upstream: ``x = self.nin_shortcut(h);
  return x + h``); conv1, conv2 and nin_shortcut have no bias;
- encoder: ``conv_in`` (3x3, no bias), per level ``num_res_blocks`` blocks then 2x2 average
  pooling except at the last level, mid ``block_1``, ``block_2``, GroupNorm, swish, 1x1
  ``conv_out`` (bias) to ``z_channels``;
- decoder: ``conv_in`` (3x3, bias), mid ``block_1``, ``block_2``, per level from the last
  ``num_res_blocks`` blocks (not ``+ 1``) then nearest-x2 + ``upsample.conv`` (3x3, bias) except
  at level 0, GroupNorm, swish, ``conv_out`` (3x3, bias);
- quantiser: id = argmin_k ||z - e_k||^2 (||z||^2 + ||e_k||^2 - 2 z.e_k), ids row-major.

GroupNorm has 32 groups and eps 1e-6, swish is x * sigmoid(x); 3x3 convolutions pad by 1
(open-muse's ``Conv2dSame`` at stride 1 pads (k - 1) / 2 on each side, the same). Images are in
[0, 1] on both sides, no affine map (ImprovedNAT's ``dataset.py`` feeds uint8 / 255; its ``train.py``
clamps the decoder output to [0, 1]).

Shapes: images (B, 3, H, W); ids (B, h*w) int64 in [0, n_embed); h = H / 2**(len(ch_mult) - 1);
latents (B, z_channels, h, w).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from migbench.backbones.common.vq import GridTokenizer, Quantizer, check_ids, check_images
from torch import nn


@dataclass(frozen=True)
class MaskGitVQGANConfig:
    """Architecture in MAGE's ``ddconfig`` names; the defaults are ``vq-f16-jax.yaml`` (168
    tensors, 54,515,587 parameters). The codebook dimension is ``z_channels`` (no quant_conv).
    The mid stage always has two blocks; open-muse builds ``num_res_blocks`` there, so the two
    namings describe the same network when ``num_res_blocks == 2`` (both released models)."""

    n_embed: int = 1024
    z_channels: int = 256
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    in_channels: int = 3
    out_ch: int = 3

    @classmethod
    def tiny(cls) -> MaskGitVQGANConfig:
        """450,307 parameters, f = 2, widths 64 then 32: a ``nin_shortcut`` at both encoder
        levels (32 -> 64 -> 32) and at decoder level 0 (32 -> 64); 32x32 images <-> 16x16 ids of
        64 codes of dimension 32."""
        return cls(n_embed=64, z_channels=32, ch=32, ch_mult=(2, 1), num_res_blocks=2)

    @property
    def factor(self) -> int:
        """Downsampling factor f between image side and token-grid side."""
        return 2 ** (len(self.ch_mult) - 1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


def _conv(c_in: int, c_out: int, kernel: int = 3, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=bias)


class ResnetBlock(nn.Module):
    """(B, Cin, H, W) -> (B, Cout, H, W): h = two GroupNorm-swish-conv3x3 (no bias), then
    x + h, or nin_shortcut(h) + h when Cin != Cout (Google's quirk: the 1x1 acts on h)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), _conv(c_in, c_out, bias=False)
        self.norm2, self.conv2 = _norm(c_out), _conv(c_out, c_out, bias=False)
        self.nin_shortcut = _conv(c_out, c_out, 1, bias=False) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(h)) + h


class Upsample(nn.Module):
    """(B, C, H, W) -> (B, C, 2H, 2W): nearest-neighbour x2, then a 3x3 conv with bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: ResnetBlocks ``block.{i}`` (the decoder adds an ``upsample`` to all levels
    but level 0 and applies it after ``forward``)."""

    def __init__(self, c_in: int, c_out: int, blocks: int) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(c_in if i == 0 else c_out, c_out) for i in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x


class Mid(nn.Module):
    """The bottleneck ``block_1``, ``block_2`` at width C: (B, C, h, w) -> same."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.block_1(x))


class Encoder(nn.Module):
    """(B, in_channels, H, W) in [0, 1] -> latents (B, z_channels, H/f, W/f), not quantised."""

    def __init__(self, c: MaskGitVQGANConfig) -> None:
        super().__init__()
        widths = [c.ch * m for m in (1, *c.ch_mult)]
        self.conv_in = _conv(c.in_channels, c.ch, bias=False)
        self.down = nn.ModuleList(Level(widths[i], widths[i + 1], c.num_res_blocks) for i in range(len(c.ch_mult)))
        self.mid = Mid(widths[-1])
        self.norm_out = _norm(widths[-1])
        self.conv_out = _conv(widths[-1], c.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            h = level(h)
            if i != len(self.down) - 1:
                h = F.avg_pool2d(h, kernel_size=2, stride=2)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """Quantised latents (B, z_channels, h, w) -> images (B, out_ch, f*h, f*w), nominally in
    [0, 1] and not clamped. Usable on its own (TiTok's pixel decoder is this module).

    ``up.{i}`` is the level of width ``ch * ch_mult[i]``, run from the last to ``up.0``."""

    def __init__(self, c: MaskGitVQGANConfig) -> None:
        super().__init__()
        last = len(c.ch_mult) - 1
        widths = [c.ch * m for m in c.ch_mult]
        self.conv_in = _conv(c.z_channels, widths[-1])
        self.mid = Mid(widths[-1])
        self.up = nn.ModuleList(Level(widths[min(i + 1, last)], widths[i], c.num_res_blocks) for i in range(last + 1))
        for i in range(1, last + 1):
            self.up[i].upsample = Upsample(widths[i])
        self.norm_out = _norm(widths[0])
        self.conv_out = _conv(widths[0], c.out_ch)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            h = self.up[i](h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class MaskGitVQGAN(GridTokenizer):
    """The tokenizer: ``encode`` images in [0, 1] -> ids, ``decode`` ids -> images in [0, 1].

    ``image_size`` is the side of the images it takes and returns (256 for the released weights);
    the token grid is ``image_size / f`` on each side."""

    def __init__(self, config: MaskGitVQGANConfig = MaskGitVQGANConfig(), image_size: int = 256) -> None:
        super().__init__()
        if image_size <= 0 or image_size % config.factor:
            raise ValueError(f"image_size must be a positive multiple of {config.factor}, got {image_size}")
        self.config, self.image_size = config, image_size
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = Quantizer(config.n_embed, config.z_channels)

    def describe(self) -> dict[str, object]:
        return {"kind": "maskgit_vqgan", "image_size": self.image_size, **asdict(self.config)}

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> ids (B, h*w) int64, row-major over the grid."""
        check_images(images, (self.config.in_channels, self.image_size, self.image_size))
        z = self.encoder(images.to(self.decoder.conv_out.weight.dtype))  # (B, D, h, w)
        ids = self.quantize.nearest(z.permute(0, 2, 3, 1).reshape(-1, self.config.z_channels))
        return ids.reshape(images.shape[0], -1)

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Quantised latents (B, z_channels, h, w) -> decoder output (B, 3, H, W) in the module's
        dtype, not clamped (upstream's ``decode``)."""
        shape = (self.config.z_channels, *self.token_shape)
        if z.dim() != 4 or tuple(z.shape[1:]) != shape:
            raise ValueError(f"latents must have shape (B, {', '.join(map(str, shape))}), got {tuple(z.shape)}")
        return self.decoder(z.to(self.decoder.conv_out.weight.dtype))

    @torch.no_grad()
    def decode_raw(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h*w) -> decoder output (B, 3, H, W) in the module's dtype, nominally in [0, 1]
        and not clamped (upstream's ``decode_code``)."""
        check_ids(ids, self.token_shape[0] * self.token_shape[1], self.codebook_size)
        return self.decoder(self.quantize.lookup(ids, self.token_shape))

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h*w) -> images (B, 3, H, W) float32, the decoder output clamped to [0, 1]."""
        return self.decode_raw(ids).float().clamp(0.0, 1.0)


# MAGE name pattern <-> open-muse name pattern, matched on whole dotted segments anywhere in a key
# (so a decoder alone under any prefix, e.g. TiTok's ``pixel_decoder.``, renames too).
OPEN_MUSE_RENAMES: tuple[tuple[str, str], ...] = (
    ("mid.block_1.", "mid.0."),
    ("mid.block_2.", "mid.1."),
    ("up.{i}.upsample.conv.", "up.{i}.upsample_conv."),
)


def _rule(source: str, target: str) -> tuple[re.Pattern[str], str]:
    """A template pair -> (regex on whole dotted segments, replacement); ``{i}`` is a level index."""
    pattern = r"(^|\.)" + re.escape(source).replace(re.escape("{i}"), r"(\d+)")
    return re.compile(pattern), r"\g<1>" + target.replace("{i}", r"\g<2>")


def _rename(state: Mapping[str, torch.Tensor], to_open_muse: bool) -> dict[str, torch.Tensor]:
    pairs = [(a, b) if to_open_muse else (b, a) for a, b in OPEN_MUSE_RENAMES]
    targets = [_rule(target, source)[0] for source, target in pairs]
    clash = next((k for k in state for t in targets if t.search(k)), None)
    if clash is not None:
        raise ValueError(f"state already has {'open-muse' if to_open_muse else 'MAGE'} names, e.g. {clash!r}")
    rules = [_rule(source, target) for source, target in pairs]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = pattern.sub(replacement, key)
        out[key] = value
    return out


def to_open_muse(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MAGE names -> open-muse ``MaskGitVQGAN`` names (``mid.block_{1,2}`` -> ``mid.{0,1}``,
    ``up.i.upsample.conv`` -> ``up.i.upsample_conv``); the same tensors, other keys unchanged."""
    return _rename(state, to_open_muse=True)


def from_open_muse(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open-muse ``MaskGitVQGAN`` names -> MAGE names; the inverse of :func:`to_open_muse`."""
    return _rename(state, to_open_muse=False)
