"""Fashion-MNIST: locating, reading and shaping the data set.

Images come out as float tensors of shape (B, 1, 32, 32) in [0, 1]: the 28x28 originals are
zero-padded by 2 pixels on every side (the background of Fashion-MNIST is 0).

The data is found in this order:
1. ``data_dir`` argument (the CLI's ``--data-dir``) or the ``MIGBENCH_DATA`` environment variable;
2. the Debian/Ubuntu package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``);
3. torchvision's downloader, into ``~/.cache/migbench/fashion-mnist``, where the internet allows.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from migbench.paths import cache_dir

SPLITS = ("train", "test")
NUM_CLASSES = 10
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SIZE = 32
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_COUNTS = {"train": 60000, "test": 10000}


class DatasetMissingError(RuntimeError):
    """Fashion-MNIST could not be found or read; the message names every way to get it."""


def _how_to_get(reason: str) -> DatasetMissingError:
    return DatasetMissingError(
        f"Fashion-MNIST: {reason}\n"
        "Get it in one of three ways:\n"
        "  1. pass --data-dir DIR (or set MIGBENCH_DATA=DIR) to a folder holding the four IDX\n"
        "     files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-...);\n"
        "  2. install the Debian/Ubuntu package: apt-get install dataset-fashion-mnist\n"
        f"     (files under {DEBIAN_DIR});\n"
        "  3. allow torchvision's downloader to reach the internet (tried automatically).")


@dataclass(frozen=True)
class FashionMNIST:
    """One split in memory. ``images``: (N, 28, 28) uint8; ``labels``: (N,) int64."""

    split: str
    images: np.ndarray
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def tensors(self, indices: np.ndarray | slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 1, 32, 32) float32 in [0, 1] and labels (B,) int64 for ``indices``."""
        sel = slice(None) if indices is None else indices
        return to_model_images(self.images[sel]), torch.from_numpy(self.labels[sel]).long()


def to_model_images(images_uint8: np.ndarray) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 1, 32, 32) float32 in [0, 1], zero-padded by 2 pixels."""
    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).float().div_(255.0)
    return torch.nn.functional.pad(x, (2, 2, 2, 2)).unsqueeze(1)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: header promises {expected} bytes, file has {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims).copy()


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        for candidate in (folder / name, folder / "FashionMNIST" / "raw" / name):
            if candidate.is_file():
                return candidate
    return None


def _load_from(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    image_path, label_path = (_find_file(folder, stem) for stem in _FILES[split])
    if image_path is None or label_path is None:
        return None
    try:
        images, labels = _read_idx(image_path), _read_idx(label_path)
    except (OSError, ValueError, EOFError) as err:
        raise _how_to_get(f"the files in {folder} are corrupt ({err}).") from err
    if images.shape != (_COUNTS[split], 28, 28) or labels.shape != (_COUNTS[split],):
        raise _how_to_get(f"the {split} files in {folder} have shapes {images.shape} and "
                          f"{labels.shape}, expected ({_COUNTS[split]}, 28, 28) and ({_COUNTS[split]},).")
    if labels.max() >= NUM_CLASSES:
        raise _how_to_get(f"the {split} labels in {folder} exceed {NUM_CLASSES - 1}.")
    return images, labels.astype(np.int64)


def _torchvision_download(split: str) -> Path | None:
    target = cache_dir() / "fashion-mnist"
    try:
        from torchvision.datasets import FashionMNIST as TVFashionMNIST

        TVFashionMNIST(str(target), train=split == "train", download=True)
    except Exception:  # noqa: BLE001 - any failure means "not available this way"
        return None
    return target / "FashionMNIST" / "raw"


def candidate_dirs(data_dir: str | os.PathLike[str] | None = None) -> list[tuple[str, Path]]:
    """The folders searched, in order, each with the name of the way it was found."""
    found: list[tuple[str, Path]] = []
    if data_dir is not None:
        found.append(("--data-dir", Path(data_dir)))
    elif os.environ.get("MIGBENCH_DATA"):
        found.append(("MIGBENCH_DATA", Path(os.environ["MIGBENCH_DATA"])))
    found.append(("debian-package", DEBIAN_DIR))
    return found


def load_split(split: str, data_dir: str | os.PathLike[str] | None = None,
               allow_download: bool = True) -> FashionMNIST:
    """Load one split ("train" or "test") from the first source that has it.

    An explicit ``data_dir`` (or ``MIGBENCH_DATA``) that lacks the files is an error rather
    than a silent fall-through, so a typo never picks up a different copy of the data.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    explicit = data_dir is not None or bool(os.environ.get("MIGBENCH_DATA"))
    for way, folder in candidate_dirs(data_dir):
        loaded = _load_from(folder, split)
        if loaded is not None:
            return FashionMNIST(split, loaded[0], loaded[1], f"{way}:{folder}")
        if way in ("--data-dir", "MIGBENCH_DATA"):
            raise _how_to_get(f"{way} points to {folder}, which has no {split} IDX files.")
    if allow_download and not explicit:
        folder = _torchvision_download(split)
        if folder is not None:
            loaded = _load_from(folder, split)
            if loaded is not None:
                return FashionMNIST(split, loaded[0], loaded[1], f"torchvision:{folder}")
    raise _how_to_get("no copy was found.")
