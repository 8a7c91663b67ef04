"""A tiny random 1-D tokenizer (TiTok's shape): a 32x32 grey image <-> 16 latent tokens.

No token is a patch: the encoder maps the whole image to N latent vectors, each quantised to
its nearest code (largest cosine), and the decoder maps the N code vectors back to the whole
image. Random weights, never trained: it exists so that the contract is exercised on
``token_shape = (N,)`` while the images still fit the Fashion-MNIST classifier.

Shapes: images (B, 1, 32, 32) in [0, 1]; ids (B, N) int64 in [0, K); codebook (K, D).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Tokenizer1DConfig:
    codebook_size: int = 16
    num_tokens: int = 16
    code_dim: int = 8
    image_size: int = 32


class Tokenizer1D(nn.Module):
    """``encode`` images (B, 1, S, S) -> ids (B, N); ``decode`` ids -> images in (0, 1)."""

    def __init__(self, config: Tokenizer1DConfig = Tokenizer1DConfig()) -> None:
        super().__init__()
        self.config = config
        pixels, latent = config.image_size ** 2, config.num_tokens * config.code_dim
        self.encoder = nn.Linear(pixels, latent)
        self.decoder = nn.Linear(latent, pixels)
        self.register_buffer("codebook", F.normalize(torch.randn(config.codebook_size, config.code_dim), dim=1))

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def token_shape(self) -> tuple[int, ...]:
        """1-D: N tokens with no spatial layout."""
        return (self.config.num_tokens,)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, self.config.image_size, self.config.image_size)

    def describe(self) -> dict[str, object]:
        return {"kind": "toy1d_tokenizer", **asdict(self.config)}

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 1, S, S) in [0, 1] -> ids (B, N) int64."""
        if images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"images must have shape (B, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
        latents = self.encoder((images * 2.0 - 1.0).flatten(1)).view(images.shape[0], self.config.num_tokens, -1)
        return (F.normalize(latents, dim=-1) @ self.codebook.t()).argmax(dim=-1)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, N) -> images (B, 1, S, S) float32 in (0, 1) (a sigmoid)."""
        n, k = self.config.num_tokens, self.codebook_size
        if ids.dim() != 2 or ids.shape[1] != n:
            raise ValueError(f"ids must have shape (B, {n}), got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= k):
            raise ValueError(f"ids must lie in [0, {k}), got [{int(ids.min())}, {int(ids.max())}]")
        pixels = self.decoder(self.codebook[ids].flatten(1)).float().sigmoid()
        return pixels.view(ids.shape[0], *self.image_shape)
