"""Where samples become images: the one quantiser, sample files (whole or in per-process
shards merged by sample index) and grids."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from migbench.api import Tokenizer


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


NORMALISATIONS = ("none", "minmax")


def minmax_quantize(images: torch.Tensor) -> torch.Tensor:
    """Float images (B, C, H, W) in any range -> uint8 (B, H, W, C), each stretched by its own
    minimum and maximum over all channels and pixels, as valeoai's ``remap_image_torch``
    (Maskgit-pytorch v1.0, Metrics/sample_and_eval.py):
    ``trunc(clip((x - min) / (max - min) * 255, 0, 255))`` in float32 (its uint8 cast truncates).
    The stretch ignores the range's scale and shift, so a decoder's unclamped output in [-1, 1]
    or in [0, 1] gives the same images. A constant image (upstream divides by zero) becomes 0.
    On images already stretched (minimum 0, maximum 255) it is the identity."""
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be floating point (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
    x = images.detach().float()
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    high = x.amax(dim=(1, 2, 3), keepdim=True)
    stretched = torch.nan_to_num(((x - low) / (high - low)) * 255, nan=0.0)
    return torch.clip(stretched, 0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def decode_images(tokenizer: Tokenizer, ids: torch.Tensor, normalisation: str = "none") -> torch.Tensor:
    """uint8 images (B, H, W, C) of token ids (B, N): :func:`quantize` of ``tokenizer.decode``, or
    with ``normalisation="minmax"`` :func:`minmax_quantize` of the decoder's unclamped output
    (the tokenizer's optional ``decode_raw``, else ``decode``), which is what valeoai scores."""
    if normalisation == "none":
        return quantize(tokenizer.decode(ids))
    if normalisation == "minmax":
        return minmax_quantize(getattr(tokenizer, "decode_raw", tokenizer.decode)(ids))
    raise ValueError(f"image normalisation must be one of {', '.join(NORMALISATIONS)}, got {normalisation!r}")


def save_samples(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """ADM layout: ``arr_0`` uint8 (N, H, W, C), ``arr_1`` int64 labels (N,)."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"samples must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, arr_0=images, arr_1=labels.astype(np.int64))


class SampleShard:
    """One process's samples, appended batch by batch to a raw file: uint8 rows (H, W, C) in the
    order written, no header (:func:`merge_sample_shards` reads it back with the rows' indices)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "wb")

    def write(self, images: np.ndarray) -> None:
        """Append uint8 images (B, H, W, C)."""
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"samples must be uint8 (B, H, W, C), got {images.dtype} {images.shape}")
        self._file.write(np.ascontiguousarray(images).tobytes())

    def close(self) -> None:
        self._file.close()


def merge_sample_shards(path: Path, shards: Sequence[tuple[Path | None, np.ndarray]], image_shape: tuple[int, ...],
                        labels: np.ndarray, chunk: int = 256) -> None:
    """Write the ADM ``.npz`` (``arr_0`` uint8 (N, H, W, C), ``arr_1`` int64 (N,)) of several
    :class:`SampleShard` files in sample-index order, then delete the shards.

    ``shards`` holds each shard's path (None for a process without samples) and the sample
    indices (n_p,) of its rows; together they cover 0..N-1 once. ``labels`` (N,) are in index
    order. ``arr_0`` is streamed from memory-mapped shards ``chunk`` samples at a time, into a
    temporary file renamed over ``path`` at the end.
    """
    n = sum(len(indices) for _, indices in shards)
    owner, row = np.full(n, -1, np.int64), np.zeros(n, np.int64)
    for p, (_, indices) in enumerate(shards):
        owner[indices], row[indices] = p, np.arange(len(indices))
    if len(labels) != n or (owner < 0).any():
        raise ValueError("the shards do not cover the sample indices exactly once, or labels do not match them")
    image_shape = tuple(int(d) for d in image_shape)
    rows = [np.memmap(shard, np.uint8, "r", shape=(len(indices), *image_shape)) if shard is not None and len(indices)
            else np.zeros((0, *image_shape), np.uint8) for shard, indices in shards]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (n, *image_shape)}
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("arr_0.npy", "w", force_zip64=True) as out:
            np.lib.format.write_array_header_1_0(out, header)
            for start in range(0, n, chunk):
                ids = np.arange(start, min(n, start + chunk))
                # runs of consecutive rows of one shard (a batch is one run)
                cuts = np.flatnonzero((np.diff(owner[ids]) != 0) | (np.diff(row[ids]) != 1)) + 1
                for run in np.split(ids, cuts):
                    source = rows[owner[run[0]]]
                    out.write(np.ascontiguousarray(source[row[run[0]]:row[run[-1]] + 1]).tobytes())
        with archive.open("arr_1.npy", "w", force_zip64=True) as out:
            np.lib.format.write_array(out, np.asarray(labels, np.int64))
    del rows
    os.replace(tmp, path)
    for shard, _ in shards:
        if shard is not None:
            shard.unlink(missing_ok=True)


def load_samples(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Images uint8 (N, H, W, C) and labels (N,) (or None) from an ADM-layout ``.npz``.

    A file numpy cannot read (truncated, corrupt, not an ``.npz``) raises ValueError saying so,
    as do missing images, images of another dtype or rank, and labels that are not one per image.
    """
    try:
        data = np.load(path)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("an .npy array, not an .npz archive")
        with data:
            images = data["arr_0"] if "arr_0" in data.files else None
            labels = data["arr_1"] if "arr_1" in data.files else None
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise ValueError(f"file {path} is not a valid samples file ({type(err).__name__}: {err})") from err
    if images is None:
        raise ValueError(f"{path} has no arr_0 (ADM layout: arr_0 images, arr_1 labels)")
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{path}: arr_0 must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    if labels is not None and labels.shape != (len(images),):
        raise ValueError(f"{path}: arr_1 must hold one label per image ({len(images)}), got shape {labels.shape}")
    return images, labels


def grid_subset(images: np.ndarray, labels: np.ndarray, indices: np.ndarray, per_class: int = 10,
                classes: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The samples a grid shows, in index order: the first ``per_class`` (by sample index) of each
    of the ``classes`` smallest class ids present; images (n, H, W, C), labels (n,), indices (n,)
    -> the same three, at most ``classes * per_class`` long.

    The subset of a union equals the subset of the union of subsets, so a process can keep only
    its own subset batch by batch, and the subset of the processes' subsets is that of all samples.
    """
    order = np.argsort(indices, kind="stable")
    kept_classes = np.unique(labels)[:classes]
    pick = np.concatenate([order[labels[order] == c][:per_class] for c in kept_classes]) if len(order) else order
    pick = pick[np.argsort(indices[pick], kind="stable")]
    return images[pick], labels[pick], indices[pick]


def save_grid(path: Path, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
              per_row: int = 10, max_classes: int = 10, scale: int | None = None) -> None:
    """A PNG of uint8 ``images`` (N, H, W, C), C = 1 (grey) or 3 (RGB): one row for each of the
    first ``max_classes`` classes present (in class order), up to ``per_row`` samples each, the
    class name on the left (as many columns as the fullest row needs). ``scale`` defaults to 2 for images up to 32 px and 1 above, so even
    1,000 ImageNet classes give a 10 x 10 grid of at most a few megapixels. Written beside the
    target and renamed over it, so a kill never leaves a truncated PNG."""
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        raise ValueError(f"grid images must be (N, H, W, 1 or 3), got shape {images.shape}")
    classes = sorted(set(int(c) for c in labels))[:max_classes]
    per_row = min(per_row, max((int((labels == c).sum()) for c in classes), default=1))  # no empty columns
    h, w, channels = images.shape[1:4]
    scale = scale or (2 if max(h, w) <= 32 else 1)
    mode = "L" if channels == 1 else "RGB"
    label_w, pad = 90, 2
    canvas = Image.new(mode, (label_w + per_row * (w * scale + pad), len(classes) * (h * scale + pad)),
                       255 if mode == "L" else (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for row, c in enumerate(classes):
        y = row * (h * scale + pad)
        draw.text((4, y + h * scale // 2 - 6), class_names[c][:14] if c < len(class_names) else str(c),
                  fill=0 if mode == "L" else (0, 0, 0))
        for col, idx in enumerate(np.flatnonzero(labels == c)[:per_row]):
            tile = Image.fromarray(images[idx, :, :, 0] if channels == 1 else images[idx], mode)
            canvas.paste(tile.resize((w * scale, h * scale), Image.NEAREST), (label_w + col * (w * scale + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    canvas.save(tmp, format="PNG")
    os.replace(tmp, path)


def _read_png(path: Path) -> np.ndarray:
    """One PNG as uint8 (H, W) or (H, W, C); a truncated or corrupt file is a ValueError naming it."""
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise ValueError(f"a {image.format} image")
            image.verify()  # chunk checksums and the end marker: catches a truncated file
        with Image.open(path) as image:
            return np.asarray(image)
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"file {path} is not a valid PNG image ({type(err).__name__}: {err})") from None


def load_png_folder(folder: Path) -> tuple[np.ndarray, None]:
    """Every ``*.png`` of a folder (sorted by name) as uint8 (N, H, W, C); no labels."""
    paths = sorted(folder.glob("*.png"))
    if not paths:
        raise ValueError(f"{folder} holds no .png files")
    arrays = [_read_png(p) for p in paths]
    arrays = [a[..., None] if a.ndim == 2 else a for a in arrays]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"the PNGs in {folder} differ in size or channels")
    return np.stack(arrays), None
