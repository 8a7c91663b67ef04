"""Pieces the VQGAN tokenizers share: the codebook with its nearest-code search and id lookup,
and the checks of their inputs (one-line ValueErrors)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class GridTokenizer(nn.Module):
    """What a VQGAN tokenizer of square ``image_size`` images says about its shapes, from its
    ``config`` (``n_embed`` codes, downsampling ``factor``, ``out_ch`` channels): ``codebook_size``,
    ``token_shape`` (h, w) row-major and ``image_shape`` (C, H, W)."""

    config: Any
    image_size: int

    @property
    def codebook_size(self) -> int:
        return self.config.n_embed

    @property
    def token_shape(self) -> tuple[int, int]:
        """The 2-D grid (h, w) of ids, row-major."""
        side = self.image_size // self.config.factor
        return (side, side)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.config.out_ch, self.image_size, self.image_size)


class Quantizer(nn.Module):
    """The codebook ``embedding`` (n_embed, dim): nearest-code ids and id -> latent lookup (no training path)."""

    def __init__(self, n_embed: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, dim)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """ids (M,) of argmin_k ||z_m - e_k||^2 for z (M, D), in float32 whatever the module dtype."""
        z, e = z.float(), self.embedding.weight.float()
        distance = z.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * z @ e.t()
        return distance.argmin(dim=1)

    def lookup(self, ids: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """ids (B, h*w) row-major -> quantised latents (B, D, h, w), the codebook rows."""
        h, w = grid
        return self.embedding(ids.long()).reshape(ids.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()


def check_images(images: torch.Tensor, shape: tuple[int, int, int]) -> None:
    """Refuse images that are not floating point (B, C, H, W) of ``shape`` (C, H, W)."""
    if images.dim() != 4 or tuple(images.shape[1:]) != shape:
        raise ValueError(f"images must have shape (B, {', '.join(map(str, shape))}), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}")


def check_ids(ids: torch.Tensor, num_tokens: int, codebook_size: int) -> None:
    """Refuse ids that are not int64/int32 (B, ``num_tokens``) in [0, ``codebook_size``)."""
    if ids.dim() != 2 or ids.shape[1] != num_tokens:
        raise ValueError(f"ids must have shape (B, {num_tokens}), got {tuple(ids.shape)}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"ids must be int64 or int32, got dtype {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= codebook_size):
        raise ValueError(f"ids must lie in [0, {codebook_size}), got [{int(ids.min())}, {int(ids.max())}]")
