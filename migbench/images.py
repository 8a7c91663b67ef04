"""Where samples become images: the one quantiser, sample files and grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1], (B, C, H, W) -> uint8 (B, H, W, C) by round(255 x).

    The only float -> uint8 conversion in migbench (evaluation pitfall 3: one shared quantiser).
    Values outside [0, 1] or non-finite values are errors, not silently clipped.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}")
    x = images.detach().float()
    if x.numel() and (not torch.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0):
        raise ValueError(f"images must lie in [0, 1], got [{float(x.min())}, {float(x.max())}]")
    return (x * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def save_samples(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """ADM layout: ``arr_0`` uint8 (N, H, W, C), ``arr_1`` int64 labels (N,)."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"samples must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, arr_0=images, arr_1=labels.astype(np.int64))


def load_samples(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Images uint8 (N, H, W, C) and labels (N,) (or None) from an ADM-layout ``.npz``."""
    with np.load(path) as data:
        if "arr_0" not in data:
            raise ValueError(f"{path} has no arr_0 (ADM layout: arr_0 images, arr_1 labels)")
        images = data["arr_0"]
        labels = data["arr_1"] if "arr_1" in data else None
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{path}: arr_0 must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    return images, labels


def save_grid(path: Path, images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...],
              per_row: int = 10, scale: int = 2) -> None:
    """One row per class present (in class order), up to ``per_row`` samples each, class name left."""
    classes = sorted(set(int(c) for c in labels))
    h, w = images.shape[1:3]
    label_w, pad = 90, 2
    canvas = Image.new("L", (label_w + per_row * (w * scale + pad), len(classes) * (h * scale + pad)), 255)
    draw = ImageDraw.Draw(canvas)
    for row, c in enumerate(classes):
        y = row * (h * scale + pad)
        draw.text((4, y + h * scale // 2 - 6), class_names[c] if c < len(class_names) else str(c), fill=0)
        for col, idx in enumerate(np.flatnonzero(labels == c)[:per_row]):
            tile = Image.fromarray(images[idx, :, :, 0] if images.shape[3] == 1 else images[idx])
            tile = tile.convert("L").resize((w * scale, h * scale), Image.NEAREST)
            canvas.paste(tile, (label_w + col * (w * scale + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def load_png_folder(folder: Path) -> tuple[np.ndarray, None]:
    """Every ``*.png`` of a folder (sorted by name) as uint8 (N, H, W, C); no labels."""
    paths = sorted(folder.glob("*.png"))
    if not paths:
        raise ValueError(f"{folder} holds no .png files")
    arrays = [np.asarray(Image.open(p)) for p in paths]
    arrays = [a[..., None] if a.ndim == 2 else a for a in arrays]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"the PNGs in {folder} differ in size or channels")
    return np.stack(arrays), None
