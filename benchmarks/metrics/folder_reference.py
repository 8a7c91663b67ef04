"""References from a folder of real images, streamed: names, checks, features cached by content.

Names (the crop size is part of the name, so of every run hash, and of the reference's sha256):

- ``imagenet-<train|val>-<size>``: the folder ``$MIGBENCH_IMAGENET/<split>``;
- ``<folder>@<size>``: any folder, e.g. ``/data/imagenet/val@256``;

each optionally followed by ``-<k>pc``: only the first k images of each class, in path order
(``imagenet-train-256-50pc``: 50,000 train images), then by ``-torchvision``: torchvision's
``Resize`` + ``CenterCrop`` (valeoai's evaluation) instead of ADM's ``center_crop_arr``
(``imagenet-val-256-torchvision``). Layouts, labels and crops are those of
:mod:`migbench.backbones.common.imagenet`.

Features are extracted batch by batch as the files are read, with a progress bar on a terminal,
so no more than one batch of images is ever held; the folder's content hash is computed on the
way. Under ``<cache>/refs``:

- ``folders/<stat signature>.json``: the content sha256 of the folder as listed (paths, labels,
  sizes, mtimes), so a second run finds its features without reading a file;
- ``<reference sha256[:16]>-<extractor>-<ident>.pt``: the features, keyed like every reference
  (:func:`~migbench.benchmarks.metrics.evaluate.feature_cache_path`: extractor, its weights and
  the image normalisation).

The reference's sha256 is the sha256 of ``{"content_sha256", "crop", "size"}`` (the crop as
recorded: ``adm-center-crop`` or ``torchvision-resize-center-crop``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from migbench.backbones.common.imagenet import (
    CROPS,
    IMAGENET_ENV,
    SPLITS,
    ImageFolder,
    ImageNetError,
    list_folder,
    read_crops,
)
from migbench.benchmarks.metrics.evaluate import (
    EvaluationError,
    Extractor,
    Reference,
    extract_batch,
    feature_cache_path,
    load_features,
    save_features,
)
from tqdm.auto import tqdm

from migbench.config import stable_hash
from migbench.paths import cache_dir

_TAIL = r"(?P<size>\d+)(?:-(?P<per_class>\d+)pc)?(?:-(?P<crop>torchvision))?"  # no suffix: ADM's crop
NAMED_REF_RE = re.compile(rf"imagenet-(?P<split>{'|'.join(SPLITS)})-{_TAIL}")
FOLDER_REF_RE = re.compile(rf"(?P<folder>.+)@{_TAIL}")
BATCH_SIZE = 500  # images decoded and extracted at a time (the default of evaluate.extract)


@dataclass(frozen=True)
class FolderReference:
    """A parsed folder reference: its ``name``, folder ``root``, crop ``size``, ``per_class``
    cap and ``crop`` (a key of :data:`~migbench.backbones.common.imagenet.CROPS`)."""

    name: str
    root: Path
    size: int
    per_class: int | None
    crop: str = "adm"

    def describe(self, content_sha256: str) -> dict[str, object]:
        """What the reference's sha256 is made of, recorded in provenance as ``reference_preprocessing``."""
        return {"content_sha256": content_sha256, "crop": CROPS[self.crop][0], "size": self.size}


def is_folder_reference(name: str) -> bool:
    """Whether ``name`` has the form of a folder reference (it may still fail :func:`parse`)."""
    return bool(NAMED_REF_RE.fullmatch(name) or FOLDER_REF_RE.fullmatch(name))


def parse(name: str, option: str = "--ref") -> FolderReference:
    """The folder reference ``name`` names; refuses (EvaluationError naming ``option``) a size or
    cap of 0, and an ``imagenet-*`` name while ``$MIGBENCH_IMAGENET`` is unset."""
    match = NAMED_REF_RE.fullmatch(name) or FOLDER_REF_RE.fullmatch(name)
    if match is None:
        raise EvaluationError(f"{option} {name!r}: not a folder reference (imagenet-val-256, DIR@256, "
                              "...-50pc, ...-torchvision)")
    size, per_class = int(match["size"]), match["per_class"]
    if size < 1 or per_class is not None and int(per_class) < 1:
        raise EvaluationError(f"{option} {name}: the crop size and the images per class must be >= 1")
    if match.re is NAMED_REF_RE:
        base = os.environ.get(IMAGENET_ENV)
        if not base:
            raise EvaluationError(f"{option} {name}: set ${IMAGENET_ENV} to a folder holding train/ and val/ "
                                  f"(ImageNet's layout), or name the folder itself: DIR@{size}")
        root = Path(base) / match["split"]
    else:
        root = Path(match["folder"]).expanduser()
    return FolderReference(name, root, size, None if per_class is None else int(per_class), match["crop"] or "adm")


def listing(ref: FolderReference, option: str = "--ref") -> ImageFolder:
    """The images of ``ref``'s folder (a listing, no file read); a folder that cannot be listed
    as a reference is refused in one line naming ``option``."""
    try:
        return list_folder(ref.root, ref.per_class)
    except ImageNetError as err:
        raise EvaluationError(f"{option} {ref.name}: {err}") from None
    except OSError as err:
        raise EvaluationError(f"{option} {ref.name}: cannot list {ref.root} ({err.strerror or err})") from None


def _memo_path(signature: str) -> Path:
    return cache_dir() / "refs" / "folders" / f"{signature}.json"


def _reference(ref: FolderReference, folder: ImageFolder, content_sha256: str) -> Reference:
    described = ref.describe(content_sha256)
    return Reference(ref.name, None, folder.labels, stable_hash(described, length=64),
                     preprocessing={**described, "layout": folder.layout, "per_class": ref.per_class,
                                    "classes": len(folder.wnids)})


def folder_features(ref: FolderReference, extractor: Extractor,
                    device: torch.device | str | None = None) -> tuple[Reference, dict[str, torch.Tensor]]:
    """``ref`` as a :class:`Reference` (no images; labels (N,)) and its features {layer: (N, D)
    float64}: from the cache when the folder's listing and content are known, else extracted
    :data:`BATCH_SIZE` images at a time on ``device`` while the content hash is computed."""
    folder = listing(ref)
    memo = _memo_path(folder.stat_signature())
    if memo.exists():
        known = _reference(ref, folder, json.loads(memo.read_text())["content_sha256"])
        cached = load_features(feature_cache_path(known.sha256, extractor))
        if cached is not None:
            return known, cached
    digest = hashlib.sha256()
    parts: list[dict[str, torch.Tensor]] = []
    with tqdm(total=len(folder), unit="img", desc=f"reference {ref.name}", leave=False, disable=None) as bar:
        try:
            for images, _ in read_crops(folder, ref.size, BATCH_SIZE, digest, ref.crop):
                parts.append(extract_batch(images, extractor, device))
                bar.update(len(images))
        except ImageNetError as err:
            raise EvaluationError(f"reference {ref.name}: {err}") from None
    features = {name: torch.cat([part[name] for part in parts]).double() for name in parts[0]}
    reference = _reference(ref, folder, digest.hexdigest())
    save_features(feature_cache_path(reference.sha256, extractor), features)
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_suffix(".tmp")
    tmp.write_text(json.dumps({"root": str(ref.root.resolve()), "files": len(folder),
                               "content_sha256": digest.hexdigest()}) + "\n")
    os.replace(tmp, memo)
    return reference, features


def check(name: str, option: str = "--ref") -> None:
    """Refuse, before any work, a folder reference that cannot be listed (unset
    ``$MIGBENCH_IMAGENET``, no such folder, no images, images without labels)."""
    listing(parse(name, option), option)
