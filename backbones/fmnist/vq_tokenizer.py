"""A small VQ tokenizer for 32x32 grey images: f=4 -> an 8x8 grid of ids from a 512-entry codebook.

Encoder and decoder are residual conv nets (channels 32 at 32x32, 64 at 16x16, 128 at 8x8);
the encoder has no residual block at full resolution, the decoder does (it draws the detail).
The quantiser follows ViT-VQGAN's factorised, l2-normalised codes (Yu et al. 2022) with
exponential-moving-average codebook updates (van den Oord et al. 2017, appendix) and dead-code
restarts from the current batch's encoder outputs, which together keep nearly every code in use.

Shapes: images (B, 1, 32, 32) in [0, 1]; ids (B, 64) int64 in [0, K); codebook (K, D).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VQConfig:
    """Architecture of the tokenizer; the defaults are the committed Fashion-MNIST model."""

    codebook_size: int = 512
    code_dim: int = 32
    channels: tuple[int, int, int] = (32, 64, 128)
    image_size: int = 32
    ema_decay: float = 0.99
    commitment: float = 0.25
    restart_threshold: float = 0.5


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with an identity skip: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv: (B, Cin, H, W) -> (B, Cout, 2H, 2W)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EMAQuantizer(nn.Module):
    """Nearest-code lookup on the unit sphere with EMA codebook updates and dead-code restarts.

    ``forward(z (M, D))`` returns (straight-through quantised (M, D), ids (M,), commitment loss).
    The codebook (K, D) is a buffer: it moves by EMA of the assigned encoder outputs, not by SGD.
    """

    def __init__(self, size: int, dim: int, decay: float, restart_threshold: float) -> None:
        super().__init__()
        self.decay = decay
        self.restart_threshold = restart_threshold
        init = F.normalize(torch.randn(size, dim), dim=1)
        self.register_buffer("embedding", init)
        self.register_buffer("ema_count", torch.ones(size))
        self.register_buffer("ema_sum", init.clone())

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """ids (M,) of the nearest (largest cosine) code for each row of z (M, D)."""
        return (F.normalize(z.float(), dim=1) @ self.embedding.t()).argmax(dim=1)

    def forward(self, z: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = F.normalize(z.float(), dim=1)
        ids = (z @ self.embedding.t()).argmax(dim=1)
        quantised = self.embedding[ids]
        if self.training:
            self._ema_update(z.detach(), ids, generator)
        commitment = F.mse_loss(z, quantised.detach())
        return z + (quantised - z).detach(), ids, commitment

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, ids: torch.Tensor,
                    generator: torch.Generator | None) -> None:
        size = self.embedding.shape[0]
        counts = torch.bincount(ids, minlength=size).float()
        sums = torch.zeros_like(self.ema_sum).index_add_(0, ids, z)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.embedding.copy_(F.normalize(self.ema_sum, dim=1))
        dead = self.ema_count < self.restart_threshold
        if dead.any():
            # drawn on the generator's device (the training step's CPU generator), used on z's
            picks = torch.randint(0, z.shape[0], (int(dead.sum()),), generator=generator).to(z.device)
            self.embedding[dead] = z[picks]
            self.ema_sum[dead] = z[picks]
            self.ema_count[dead] = 1.0


class VQTokenizer(nn.Module):
    """Frozen-at-use tokenizer: ``encode`` images -> ids, ``decode`` ids -> images."""

    def __init__(self, config: VQConfig = VQConfig()) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3 = config.channels
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), ResBlock(c2),
            nn.Conv2d(c2, c3, 4, stride=2, padding=1), ResBlock(c3), ResBlock(c3),
            nn.GroupNorm(8, c3), nn.SiLU(), nn.Conv2d(c3, config.code_dim, 1))
        self.decoder = nn.Sequential(
            nn.Conv2d(config.code_dim, c3, 3, padding=1), ResBlock(c3), ResBlock(c3),
            Upsample(c3, c2), ResBlock(c2), Upsample(c2, c1), ResBlock(c1),
            nn.GroupNorm(8, c1), nn.SiLU(), nn.Conv2d(c1, 1, 3, padding=1))
        self.quantizer = EMAQuantizer(config.codebook_size, config.code_dim,
                                      config.ema_decay, config.restart_threshold)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def grid(self) -> tuple[int, int]:
        side = self.config.image_size // 4
        return (side, side)

    @property
    def token_shape(self) -> tuple[int, ...]:
        """The 2-D grid (h, w) of ids, row-major."""
        return self.grid

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Decoded images (C, H, W): grey, ``image_size`` square."""
        return (1, self.config.image_size, self.config.image_size)

    def describe(self) -> dict[str, object]:
        return {"kind": "vq_tokenizer", **asdict(self.config)}

    def codebook(self) -> torch.Tensor:
        """The code vectors (K, D), unit-normalised."""
        return self.quantizer.embedding

    def _latents(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [0, 1] -> encoder outputs (B*h*w, D) in grid order."""
        _check_images(images, self.config.image_size)
        z = self.encoder(images * 2.0 - 1.0)
        return z.permute(0, 2, 3, 1).reshape(-1, self.config.code_dim)

    def _decode_vectors(self, vectors: torch.Tensor, batch: int) -> torch.Tensor:
        h, w = self.grid
        z = vectors.reshape(batch, h, w, -1).permute(0, 3, 1, 2).contiguous()
        return self.decoder(z.to(next(self.decoder.parameters()).dtype))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 1, 32, 32) in [0, 1] -> ids (B, 64) int64."""
        return self.quantizer.lookup(self._latents(images)).reshape(images.shape[0], -1)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, 64) -> images (B, 1, 32, 32) float32 clamped to [0, 1]."""
        if ids.dim() != 2 or ids.shape[1] != self.grid[0] * self.grid[1]:
            raise ValueError(f"ids must have shape (B, {self.grid[0] * self.grid[1]}), got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise ValueError(f"ids must lie in [0, {self.codebook_size}), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        out = self._decode_vectors(self.codebook()[ids.reshape(-1)], ids.shape[0])
        return ((out.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def reconstruct(self, images: torch.Tensor, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: images -> (reconstruction in [-1, 1] scale (B,1,H,W), ids (B*64,), commitment)."""
        quantised, ids, commitment = self.quantizer(self._latents(images), generator)
        return self._decode_vectors(quantised, images.shape[0]), ids, commitment


def _check_images(images: torch.Tensor, size: int) -> None:
    if images.dim() != 4 or images.shape[1:] != (1, size, size):
        raise ValueError(f"images must have shape (B, 1, {size}, {size}), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
