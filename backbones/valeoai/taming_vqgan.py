"""The taming VQGAN of valeoai's MaskGIT v1.0 (Esser et al. 2021, config ``vqgan_imagenet_f16_1024``).

f = 16 at full size: a 256x256 image <-> a 16x16 grid of ids from 1,024 codes of dimension 256
(a 512x512 image <-> 32x32 ids, same weights). State-dict names are upstream's (``encoder.*``,
``decoder.*``, ``quant_conv``, ``quantize.embedding.weight``, ``post_quant_conv``), so the released
``last.ckpt`` loads strictly once its ``state_dict`` is taken out and ``loss.*`` dropped; the
forward is ours and computes what upstream's ``VQModel.encode`` / ``decode_code`` compute:

- encoder: ``conv_in``, per level ``num_res_blocks`` ResnetBlocks (each followed by an AttnBlock
  where the level's resolution, counted from ``config.resolution``, is in ``attn_resolutions``),
  then a downsample except at the last level; mid = block, attention, block; GroupNorm, swish,
  ``conv_out`` to ``z_channels``.
- decoder: mirror image with ``num_res_blocks + 1`` blocks per level, nearest-x2 + conv upsampling.
- ResnetBlock: ``x' = s(x) + conv2(swish(norm2(conv1(swish(norm1(x))))))`` with ``s`` the 1x1
  ``nin_shortcut`` of the block *input* where the width changes, else the identity.
- AttnBlock: single-head self-attention over the h*w positions, softmax(q k^T / sqrt(c)) v, then
  ``proj_out``, plus the input.
- quantiser (``VectorQuantizer2`` at inference): id = argmin_k ||z - e_k||^2, computed as
  ||z||^2 + ||e_k||^2 - 2 z.e_k; ids row-major over the grid.

GroupNorm has 32 groups and eps 1e-6, swish is x * sigmoid(x), every convolution has a bias.
Images are in [-1, 1] inside: ``encode`` maps x in [0, 1] to 2x - 1 (valeoai's ``Trainer/vit.py``),
``decode`` maps the decoder output y to clamp((y + 1) / 2, 0, 1) (taming's own convention;
``decode_raw`` returns y itself, which valeoai's evaluation min-max normalises per image).

Shapes: images (B, 3, H, W); ids (B, h*w) int64 in [0, n_embed); h = H / 2**(len(ch_mult) - 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from migbench.backbones.common.vq import GridTokenizer, Quantizer, check_ids, check_images
from torch import nn


@dataclass(frozen=True)
class TamingVQGANConfig:
    """Architecture, in upstream's ``ddconfig`` names; the defaults are ``vqgan_imagenet_f16_1024``
    (72,141,699 parameters). ``resolution`` only places the attention blocks: the module encodes
    any image size divisible by 2**(len(ch_mult) - 1)."""

    n_embed: int = 1024
    embed_dim: int = 256
    z_channels: int = 256
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3

    @classmethod
    def tiny(cls) -> TamingVQGANConfig:
        """424,387 parameters, f = 2: both width changes (a ``nin_shortcut`` in the encoder and in
        the decoder) and attention at the lower level; 32x32 images <-> 16x16 ids of 64 codes."""
        return cls(n_embed=64, embed_dim=32, z_channels=32, ch=32, ch_mult=(2, 1), num_res_blocks=1,
                   attn_resolutions=(16,), resolution=32)

    @property
    def factor(self) -> int:
        """Downsampling factor f between image side and token-grid side."""
        return 2 ** (len(self.ch_mult) - 1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


def _conv(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2 if stride == 1 else 0)


class ResnetBlock(nn.Module):
    """(B, Cin, H, W) -> (B, Cout, H, W): two GroupNorm-swish-conv3x3 with a skip (1x1 conv of the
    input when Cin != Cout)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), _conv(c_in, c_out)
        self.norm2, self.conv2 = _norm(c_out), _conv(c_out, c_out)
        self.nin_shortcut = _conv(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """(B, C, H, W) -> same: x + proj_out(softmax(q k^T / sqrt(C)) v), one head over the H*W positions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q, self.k, self.v = _conv(channels, channels, 1), _conv(channels, channels, 1), _conv(channels, channels, 1)
        self.proj_out = _conv(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (proj(n).reshape(b, 1, c, h * w).transpose(2, 3) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, H*W, C), scale 1/sqrt(C)
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    """(B, C, H, W) -> (B, C, H/2, W/2): zero pad right and bottom by one, then a stride-2 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """(B, C, H, W) -> (B, C, 2H, 2W): nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: ResnetBlocks ``block.{i}``, each followed by ``attn.{i}`` when the level has
    attention. The encoder adds a ``downsample`` and the decoder an ``upsample`` to all levels
    but one, and applies it after ``forward``."""

    def __init__(self, c_in: int, c_out: int, blocks: int, attention: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(c_in if i == 0 else c_out, c_out) for i in range(blocks))
        self.attn = nn.ModuleList(AttnBlock(c_out) for _ in range(blocks) if attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        return x


class Mid(nn.Module):
    """The bottleneck: ``block_1``, ``attn_1``, ``block_2`` at width C: (B, C, h, w) -> same."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """(B, in_channels, H, W) in [-1, 1] -> (B, z_channels, H/f, W/f)."""

    def __init__(self, c: TamingVQGANConfig) -> None:
        super().__init__()
        widths = [c.ch * m for m in (1, *c.ch_mult)]
        self.conv_in = _conv(c.in_channels, c.ch)
        self.down = nn.ModuleList(
            Level(widths[i], widths[i + 1], c.num_res_blocks, c.resolution // 2 ** i in c.attn_resolutions)
            for i in range(len(c.ch_mult)))
        for i, level in enumerate(self.down[:-1]):
            level.downsample = Downsample(widths[i + 1])
        self.mid = Mid(widths[-1])
        self.norm_out = _norm(widths[-1])
        self.conv_out = _conv(widths[-1], c.z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            h = level(h)
            if i != len(self.down) - 1:
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """(B, z_channels, h, w) -> (B, out_ch, f*h, f*w), nominally in [-1, 1] (not clamped).

    ``up.{i}`` is the level of resolution ``resolution / 2**i``, run from the last to ``up.0``."""

    def __init__(self, c: TamingVQGANConfig) -> None:
        super().__init__()
        last = len(c.ch_mult) - 1
        widths = [c.ch * m for m in c.ch_mult]
        self.conv_in = _conv(c.z_channels, widths[-1])
        self.mid = Mid(widths[-1])
        self.up = nn.ModuleList(
            Level(widths[min(i + 1, last)], widths[i], c.num_res_blocks + 1, c.resolution // 2 ** i in c.attn_resolutions)
            for i in range(last + 1))
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


class TamingVQGAN(GridTokenizer):
    """The tokenizer: ``encode`` images in [0, 1] -> ids, ``decode`` ids -> images in [0, 1].

    ``image_size`` is the side of the images it takes and returns (256 or 512 for the released
    weights); the token grid is ``image_size / f`` on each side."""

    def __init__(self, config: TamingVQGANConfig = TamingVQGANConfig(), image_size: int = 256) -> None:
        super().__init__()
        if image_size <= 0 or image_size % config.factor:
            raise ValueError(f"image_size must be a positive multiple of {config.factor}, got {image_size}")
        self.config, self.image_size = config, image_size
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = Quantizer(config.n_embed, config.embed_dim)
        self.quant_conv = _conv(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = _conv(config.embed_dim, config.z_channels, 1)

    def describe(self) -> dict[str, object]:
        return {"kind": "taming_vqgan", "image_size": self.image_size, **asdict(self.config)}

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> ids (B, h*w) int64, row-major over the grid."""
        check_images(images, (self.config.in_channels, self.image_size, self.image_size))
        dtype = self.quant_conv.weight.dtype
        z = self.quant_conv(self.encoder((images * 2.0 - 1.0).to(dtype)))  # (B, D, h, w)
        ids = self.quantize.nearest(z.permute(0, 2, 3, 1).reshape(-1, self.config.embed_dim))
        return ids.reshape(images.shape[0], -1)

    @torch.no_grad()
    def decode_raw(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h*w) -> decoder output (B, 3, H, W) in the module's dtype, nominally in [-1, 1]
        and not clamped (upstream's ``decode_code``)."""
        check_ids(ids, self.token_shape[0] * self.token_shape[1], self.codebook_size)
        return self.decoder(self.post_quant_conv(self.quantize.lookup(ids, self.token_shape)))

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, h*w) -> images (B, 3, H, W) float32, clamp((y + 1) / 2, 0, 1) of the decoder output y."""
        return ((self.decode_raw(ids).float() + 1.0) / 2.0).clamp(0.0, 1.0)
