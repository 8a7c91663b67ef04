"""ImageNet-1k: class names, the data description of the public families, ADM's centre crop, and
the reader of a folder of real images that the evaluator streams reference features from.

Layouts read (a class's label is the index of its wnid among the sorted wnids; a full ImageNet
folder has the 1000 wnids ``n01440764 ... n15075141``, so the index is the standard class id):

- **wnid subfolders** ``ROOT/<wnid>/<image>``: ImageNet's train layout, and val once sorted into
  wnid subfolders (the usual ``valprep.sh``). The wnids are the subfolders that hold images.
- **flat** ``ROOT/<image>`` with Kaggle's ``LOC_val_solution.csv`` (header
  ``ImageId,PredictionString``; the first word of the prediction string is the image's wnid) in
  ROOT or in its parent. The wnids are every wnid the file names. ILSVRC's devkit ground truth
  (``ILSVRC2012_validation_ground_truth.txt``, ids in the devkit's own order) is not read: sort
  such a val into wnid subfolders first.

Images are the ``.jpeg``/``.jpg``/``.png`` files (any case), taken in the order of their path
relative to ROOT. Each is decoded to RGB and cut to a square by one of :data:`CROPS`: ``adm``
(:func:`adm_center_crop`, ADM's and the default) or ``torchvision`` (:func:`torchvision_center_crop`,
the ``Resize`` + ``CenterCrop`` of valeoai's ImageNet val loader).

Content hash (:func:`read_crops`): sha256 over every file in that order of
``"<relative path>\\0<label>\\0<byte count>\\0"`` then the file's bytes, computed while the files
are read for their features, so a folder is read once. :func:`read_blocks` reads chosen blocks of
files (a share of a sharded pass) and gives each block's sha256 over the same records.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision.models._meta import _IMAGENET_CATEGORIES

from migbench.api import DatasetSpec

CLASS_NAMES: tuple[str, ...] = tuple(_IMAGENET_CATEGORIES)  # torchvision's 1000 names, in class-id order
IMAGENET_ENV = "MIGBENCH_IMAGENET"  # a folder holding train/ and val/ in one of the layouts above
SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
LABELS_FILE = "LOC_val_solution.csv"


class ImageNetError(ValueError):
    """An ImageNet folder that cannot be read as described: missing, empty, unlabelled, unreadable."""


def reference_name(split: str, size: int) -> str:
    """The reference of ``$MIGBENCH_IMAGENET/<split>`` centre-cropped to ``size``: ``imagenet-val-256``."""
    return f"imagenet-{split}-{size}"


def imagenet_data(size: int = 256) -> DatasetSpec:
    """ImageNet at ``size`` x ``size``: Inception features, reference ``imagenet-val-<size>``
    (ADM's crop of the 50,000 val images), no quality floors, no token maps.

    The name carries the size (``imagenet-256``), so a suite mixing stacks of two sizes must name
    its reference rather than score 512 px samples against 256 px crops."""
    return DatasetSpec(name=f"imagenet-{size}", class_names=CLASS_NAMES, reference=reference_name("val", size),
                       extractor="inception-v3-compat",
                       references=(reference_name("val", size), reference_name("train", size)))


IMAGENET = imagenet_data(256)


def adm_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM's ``center_crop_arr`` (guided-diffusion ``image_datasets.py``): uint8 (size, size, 3).

    The image is made RGB; while its short side is at least ``2 * size`` both sides are halved
    (floor) with a BOX filter; then it is resized with BICUBIC so that the short side is ``size``
    (each side ``round(side * size / short)``); then the centre is cut, rows from
    ``(H - size) // 2`` and columns from ``(W - size) // 2``.
    """
    image = image.convert("RGB")
    while min(image.size) >= 2 * size:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), resample=Image.BICUBIC)
    pixels = np.asarray(image)
    top, left = (pixels.shape[0] - size) // 2, (pixels.shape[1] - size) // 2
    return np.ascontiguousarray(pixels[top:top + size, left:left + size])


def torchvision_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """torchvision's ``Resize(size)`` then ``CenterCrop(size)`` on a PIL image, as valeoai's
    MaskGIT evaluates ImageNet val (Trainer/trainer.py ``t_test``): uint8 (size, size, 3).

    The image is made RGB; resized with PIL's BILINEAR so that the short side is ``size`` and
    the long side ``int(size * long / short)``; then cut from ``round((H - size) / 2)``,
    ``round((W - size) / 2)`` (Python's rounding, as torchvision's ``center_crop``).
    """
    image = image.convert("RGB")
    short, long = sorted(image.size)
    resized = (size, int(size * long / short))
    image = image.resize(resized if image.width <= image.height else resized[::-1], resample=Image.BILINEAR)
    pixels = np.asarray(image)
    top, left = round((pixels.shape[0] - size) / 2.0), round((pixels.shape[1] - size) / 2.0)
    return np.ascontiguousarray(pixels[top:top + size, left:left + size])


# crop name (in reference names) -> (the name recorded in provenance, the function)
CROPS = {"adm": ("adm-center-crop", adm_center_crop),
         "torchvision": ("torchvision-resize-center-crop", torchvision_center_crop)}


@dataclass(frozen=True)
class ImageFolder:
    """The images of a folder: ``files`` (N,) relative POSIX paths in sorted order, ``labels``
    (N,) int64 indices into ``wnids`` (sorted), and the ``layout`` they were read by."""

    root: Path
    files: tuple[str, ...]
    labels: np.ndarray
    wnids: tuple[str, ...]
    layout: str

    def __len__(self) -> int:
        return len(self.files)

    def stat_signature(self) -> str:
        """sha256 over the resolved root and each file's path, label, size and mtime: what a
        cache of the content hash is checked against (a file rewritten with the same size and
        mtime goes unnoticed, as for checkpoints)."""
        digest = hashlib.sha256(str(self.root.resolve()).encode())
        for rel, label in zip(self.files, self.labels.tolist(), strict=True):
            stat = (self.root / rel).stat()
            digest.update(f"\0{rel}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        return digest.hexdigest()


def _images_in(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))


def _flat_labels(root: Path, names: list[str]) -> tuple[list[int], tuple[str, ...]]:
    """Labels of flat ``names`` from Kaggle's ``LOC_val_solution.csv`` in ``root`` or its parent."""
    found = [p for p in (root / LABELS_FILE, root.parent / LABELS_FILE) if p.is_file()]
    if not found:
        raise ImageNetError(f"{root} holds images but no wnid subfolders, and no {LABELS_FILE} beside them or "
                            "in its parent to label them: sort val into wnid subfolders (valprep.sh)")
    try:
        with open(found[0], newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        by_id = {row["ImageId"]: row["PredictionString"].split()[0] for row in rows}
    except (KeyError, IndexError, AttributeError, UnicodeDecodeError, csv.Error) as err:
        raise ImageNetError(f"file {found[0]} is not Kaggle's {LABELS_FILE} (ImageId,PredictionString): "
                            f"{type(err).__name__}: {err}") from None
    wnids = tuple(sorted(set(by_id.values())))
    index = {wnid: i for i, wnid in enumerate(wnids)}
    missing = [name for name in names if name.rsplit(".", 1)[0] not in by_id]
    if missing:
        raise ImageNetError(f"{found[0]} has no label for {len(missing)} image(s) of {root}, e.g. {missing[0]}")
    return [index[by_id[name.rsplit(".", 1)[0]]] for name in names], wnids


def list_folder(root: Path, per_class: int | None = None) -> ImageFolder:
    """The images of ``root`` with their labels (layouts in the module docstring); with
    ``per_class``, only the first ``per_class`` files of each class (in path order), a
    deterministic subset. Raises :class:`ImageNetError` for a missing or empty folder, a folder
    that mixes images with wnid subfolders, or flat images without labels."""
    if not root.is_dir():
        raise ImageNetError(f"{root}: no such folder")
    with os.scandir(root) as entries:
        subfolders = sorted(e.name for e in entries if e.is_dir())
    per_wnid = {wnid: names for wnid in subfolders if (names := _images_in(root / wnid))}
    loose = _images_in(root)
    if per_wnid and loose:
        raise ImageNetError(f"{root} mixes images ({loose[0]}, ...) with wnid subfolders: use one layout")
    if per_wnid:
        wnids = tuple(per_wnid)
        pairs = [(f"{wnid}/{name}", label) for label, wnid in enumerate(wnids) for name in per_wnid[wnid]]
        layout = "wnid subfolders"
    elif loose:
        labels, wnids = _flat_labels(root, loose)
        pairs = list(zip(loose, labels, strict=True))
        layout = f"flat, {LABELS_FILE}"
    else:
        raise ImageNetError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}) directly or in wnid subfolders")
    pairs.sort()
    if per_class is not None:
        kept, taken = [], np.zeros(len(wnids), np.int64)
        for rel, label in pairs:
            if taken[label] < per_class:
                kept.append((rel, label))
                taken[label] += 1
        pairs = kept
    files, labels = zip(*pairs, strict=True)
    return ImageFolder(root, files, np.array(labels, np.int64), wnids, layout)


def _load(path: Path, size: int, crop: str) -> tuple[bytes, np.ndarray]:
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            return data, CROPS[crop][1](image, size)
    except UnidentifiedImageError:
        raise ImageNetError(f"file {path} is not a readable image (not a format PIL knows)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageNetError(f"file {path} is not a readable image ({type(err).__name__}: {err})") from None


def read_crops(folder: ImageFolder, size: int, batch_size: int, digest: hashlib._Hash, crop: str = "adm",
               workers: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The folder's images in order as batches: uint8 (B, size, size, 3) crops (``crop``, one of
    :data:`CROPS`) and labels (B,).

    Files are read and decoded by ``workers`` threads (default: up to 8); ``digest`` is updated
    in file order with each file's record (module docstring) as its batch is yielded."""
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(folder), batch_size):
            rels = folder.files[start:start + batch_size]
            labels = folder.labels[start:start + batch_size]
            loaded = list(pool.map(lambda rel: _load(folder.root / rel, size, crop), rels))
            for rel, label, (data, _) in zip(rels, labels.tolist(), loaded, strict=True):
                digest.update(f"{rel}\0{label}\0{len(data)}\0".encode())
                digest.update(data)
            yield np.stack([pixels for _, pixels in loaded]), labels


def block_record(rels: tuple[str, ...], labels: np.ndarray, data: list[bytes]) -> str:
    """sha256 (hex) of one block of files: each file's record (module docstring) in order."""
    digest = hashlib.sha256()
    for rel, label, raw in zip(rels, labels.tolist(), data, strict=True):
        digest.update(f"{rel}\0{label}\0{len(raw)}\0".encode())
        digest.update(raw)
    return digest.hexdigest()


def read_blocks(folder: ImageFolder, size: int, block_size: int, blocks: Sequence[int], crop: str = "adm",
                workers: int | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray, str]]:
    """The folder's blocks ``blocks`` (block j: files ``j * block_size`` up to the next block),
    in the order given, as (j, uint8 (B, size, size, 3) crops, labels (B,), :func:`block_record`).

    Files are decoded by ``workers`` threads (default: up to 8); the next block is read while
    the caller works on the current one, so at most two blocks of images are held."""
    def submit(pool: ThreadPoolExecutor, j: int) -> list[Future[tuple[bytes, np.ndarray]]]:
        rels = folder.files[j * block_size:(j + 1) * block_size]
        return [pool.submit(_load, folder.root / rel, size, crop) for rel in rels]

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        pending = submit(pool, blocks[0]) if blocks else []
        for position, j in enumerate(blocks):
            loaded = [future.result() for future in pending]
            pending = submit(pool, blocks[position + 1]) if position + 1 < len(blocks) else []
            rels = folder.files[j * block_size:(j + 1) * block_size]
            labels = folder.labels[j * block_size:(j + 1) * block_size]
            yield (j, np.stack([pixels for _, pixels in loaded]), labels,
                   block_record(rels, labels, [raw for raw, _ in loaded]))
