"""ImageNet token maps: a split folder tokenised by a stack's tokenizer, streamed, sharded over
accelerate processes, cached by content.

KA-MIG tokenises ImageNet (upstream ``extract_imagenet_feature.py`` with ``dataset.ImageNet``,
KA-MIG 0b4ceb1) with ADM's ``center_crop_arr`` (no random crop, no random flip), pixels
``uint8 / 255`` as float32 in [0, 1], and, for the train split, a second copy of every crop
flipped left-right (``img.flip(dims=[-1])``). :func:`token_maps` does the same, the flipped
copy as separate maps: for M images, ids (M, N) of the crops and, with ``flip``, ids (M, N) of
their mirror images, rows in the folder's file order (:func:`~.imagenet.list_folder`), labels
(M,) kept.

Streaming and sharding: the listing is cut into blocks of :data:`BLOCK` files; one block of
crops is decoded (threads) while the previous one is encoded, so no more than two blocks of
images are ever held. Under ``accelerate launch`` (``WORLD_SIZE`` > 1) process p encodes blocks
p, p + P, ..., writes its share to a part file, and the main process merges the parts by block
index; one process just runs. The result does not depend on the number of processes.

Cache, under ``<cache>/tokens/imagenet``: ``<key>.safetensors`` with ``ids`` (M, N) int16
(int32 for codebooks over 32,768 codes) and ``labels`` (M,) int64, where the key is the
:func:`~migbench.config.stable_hash` of :class:`MapsKey` (the folder's content sha256, crop,
size, flip, the tokenizer's weight sha256), written to a temporary file and renamed, so a kill
leaves nothing half-written. The content sha256 is the sha256 of the concatenated hex
:func:`~.imagenet.block_record` of the blocks in order; ``folders/<stat signature>.json``
remembers it per listing, so a second call reads no image.

Run as a module, it fills the cache of a registered stack's split (the sharded step on GPUs):
``accelerate launch --num_processes 8 -m migbench.backbones.common.imagenet_tokens autonat_l train``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from migbench.backbones.common.imagenet import (
    CROPS,
    IMAGENET_ENV,
    ImageFolder,
    ImageNetError,
    imagenet_data,
    list_folder,
    read_blocks,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from migbench.api import DatasetSpec
from migbench.config import content_hash, stable_hash
from migbench.paths import cache_dir

BLOCK = 256  # files per block: the unit of reading, encoding, sharding and the content hash
SPLIT_RE = re.compile(r"(?P<split>train|test)(?:-(?P<per_class>\d+)pc)?")
FOLDERS = {"train": "train", "test": "val"}  # a stack's split -> the ImageNet folder
FLIPPED = {"train": True, "test": False}  # KA-MIG flips train only


@dataclass(frozen=True)
class MapsKey:
    """What one cached set of token maps is: the folder's content sha256, the crop (as recorded
    in provenance) and its size, whether the crops were flipped left-right, the tokenizer's
    weight sha256."""

    content_sha256: str
    crop: str
    size: int
    flip: bool
    tokenizer_sha256: str

    def path(self) -> Path:
        return cache_dir() / "tokens" / "imagenet" / f"{stable_hash(asdict(self), length=32)}.safetensors"


def tokenizer_sha256(tokenizer: torch.nn.Module) -> str:
    """sha256 of a tokenizer's weights: of each state-dict tensor's name, shape, dtype and bytes,
    in name order (:func:`~migbench.config.content_hash`)."""
    return content_hash(tokenizer.state_dict())


def _memo_path(folder: ImageFolder) -> Path:
    return cache_dir() / "tokens" / "imagenet" / "folders" / f"{folder.stat_signature()}.json"


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _id_dtype(codebook_size: int) -> torch.dtype:
    return torch.int16 if codebook_size <= 2 ** 15 else torch.int32


@torch.no_grad()
def encode_crops(tokenizer: Any, crops: np.ndarray, flip: bool, device: torch.device | str
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 crops (B, S, S, 3) -> ids (B, N) of the crops, and of the crops flipped left-right
    (``flip``; else None), on the CPU; pixels ``uint8 / 255`` float32 as upstream."""
    images = torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float().div(255.0)
    ids = tokenizer.encode(images).cpu()
    return ids, tokenizer.encode(images.flip(-1)).cpu() if flip else None


def _encode_share(folder: ImageFolder, tokenizer: Any, size: int, crop: str, flip: bool, device: torch.device | str,
                  rank: int, processes: int, desc: str) -> dict[str, Any]:
    """This process's blocks (rank, rank + processes, ...): {"blocks": [j], "hashes": [hex],
    "ids": [(B, N)], "flipped": [(B, N)]} (int, CPU, in ``_id_dtype``)."""
    blocks = list(range(rank, -(-len(folder) // BLOCK), processes))
    dtype = _id_dtype(tokenizer.codebook_size)
    share: dict[str, list[Any]] = {"blocks": [], "hashes": [], "ids": [], "flipped": []}
    total = sum(len(folder.files[j * BLOCK:(j + 1) * BLOCK]) for j in blocks)
    with tqdm(total=total, unit="img", desc=desc, leave=False, disable=None) as bar:
        for j, crops, _, record in read_blocks(folder, size, BLOCK, blocks, crop):
            ids, flipped = encode_crops(tokenizer, crops, flip, device)
            share["blocks"].append(j)
            share["hashes"].append(record)
            share["ids"].append(ids.to(dtype))
            share["flipped"].append(flipped.to(dtype) if flipped is not None else None)
            bar.update(len(crops))
    return share


def _part_path(folder: ImageFolder, rank: int) -> Path:
    return cache_dir() / "tokens" / "imagenet" / "parts" / f"{folder.stat_signature()[:16]}-{rank}.safetensors"


def _save_part(share: dict[str, Any], path: Path) -> None:
    tensors = {f"ids.{j}": ids for j, ids in zip(share["blocks"], share["ids"], strict=True)}
    tensors |= {f"flipped.{j}": f for j, f in zip(share["blocks"], share["flipped"], strict=True) if f is not None}
    _atomic_save(tensors, path, {"hashes": json.dumps(dict(zip(map(str, share["blocks"]), share["hashes"],
                                                                strict=True)))})


def _load_part(path: Path) -> dict[str, Any]:
    with safe_open(str(path), "pt") as handle:
        hashes = json.loads(handle.metadata()["hashes"])
    tensors = load_file(str(path))
    blocks = [int(j) for j in hashes]
    return {"blocks": blocks, "hashes": [hashes[str(j)] for j in blocks], "ids": [tensors[f"ids.{j}"] for j in blocks],
            "flipped": [tensors.get(f"flipped.{j}") for j in blocks]}


def _merge(shares: list[dict[str, Any]], flip: bool) -> tuple[str, torch.Tensor, torch.Tensor | None]:
    """(content sha256, ids (M, N), flipped ids (M, N) or None) of the shares joined by block index."""
    order = sorted((j, s, i) for s, share in enumerate(shares) for i, j in enumerate(share["blocks"]))
    if [j for j, _, _ in order] != list(range(len(order))):
        raise RuntimeError(f"token maps: blocks missing after the merge ({len(order)} blocks)")
    content = hashlib.sha256("".join(shares[s]["hashes"][i] for _, s, i in order).encode()).hexdigest()
    ids = torch.cat([shares[s]["ids"][i] for _, s, i in order])
    flipped = torch.cat([shares[s]["flipped"][i] for _, s, i in order]) if flip else None
    return content, ids, flipped


def _processes() -> tuple[Any, int, int]:
    """(accelerate's state or None, this process's index, the number of processes)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, 0, 1
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(hours=6))
    return state, state.process_index, state.num_processes


def _cached(folder: ImageFolder, keys: Callable[[str], list[MapsKey]]) -> list[torch.Tensor] | None:
    memo = _memo_path(folder)
    if not memo.exists():
        return None
    paths = [key.path() for key in keys(json.loads(memo.read_text())["content_sha256"])]
    if not all(path.exists() for path in paths):
        return None
    return [load_file(str(path))["ids"] for path in paths]


def token_maps(root: Path, tokenizer: Any, weights_sha256: str, size: int, flip: bool, crop: str = "adm",
               per_class: int | None = None, num_classes: int | None = None, device: torch.device | str = "cpu"
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Labels (M,) int64, ids (M, N) and, with ``flip``, ids (M, N) of the flipped crops (else
    None), of the images of ``root`` (``per_class``: the first k of each class; ``num_classes``:
    only the classes below it), ``crop`` (a key of :data:`~.imagenet.CROPS`) to ``size``,
    tokenised by ``tokenizer`` (whose weights have sha256 ``weights_sha256``) on ``device``
    (under accelerate: each process on its own device). Ids are int16 or int32, on the CPU."""
    folder = list_folder(root, per_class)
    if num_classes is not None and len(folder.wnids) > num_classes:
        kept = folder.labels < num_classes
        folder = replace(folder, files=tuple(f for f, keep in zip(folder.files, kept.tolist(), strict=True) if keep),
                         labels=folder.labels[kept], wnids=folder.wnids[:num_classes])

    def keys(content: str) -> list[MapsKey]:
        return [MapsKey(content, CROPS[crop][0], size, f, weights_sha256) for f in ((False, True) if flip else (False,))]

    found = _cached(folder, keys)
    if found is not None:
        return torch.from_numpy(folder.labels), found[0], found[1] if flip else None
    state, rank, processes = _processes()
    device = state.device if state is not None else torch.device(device)
    source = next(tokenizer.parameters()).device
    try:
        share = _encode_share(folder, tokenizer.to(device), size, crop, flip, device, rank, processes,
                              desc=f"tokens {root.name}" + (f" [{rank + 1}/{processes}]" if processes > 1 else ""))
    finally:
        tokenizer.to(source)
    if processes > 1:
        _save_part(share, _part_path(folder, rank))
        state.wait_for_everyone()
    if rank == 0:
        parts = [_part_path(folder, r) for r in range(processes)] if processes > 1 else []
        content, ids, flipped = _merge([_load_part(p) for p in parts] if parts else [share], flip)
        metadata = {"root": str(root.resolve()), "files": str(len(folder)), "layout": folder.layout}
        for key, maps in zip(keys(content), (ids, flipped) if flip else (ids,), strict=True):
            _atomic_save({"ids": maps, "labels": torch.from_numpy(folder.labels)}, key.path(),
                         {**metadata, **{k: str(v) for k, v in asdict(key).items()}})
        memo = _memo_path(folder)
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"root": str(root.resolve()), "files": len(folder), "content_sha256": content}) + "\n")
        os.replace(tmp, memo)
        for part in parts:
            part.unlink()
    if processes > 1:
        state.wait_for_everyone()
        if rank != 0:
            return token_maps(root, tokenizer, weights_sha256, size, flip, crop, per_class, num_classes, device)
    return torch.from_numpy(folder.labels), ids, flipped


def split_folder(split: str) -> tuple[Path, int | None, bool]:
    """A stack's ``split`` (``train``, ``test``, optionally ``-<k>pc``) -> (the ImageNet folder
    ``$MIGBENCH_IMAGENET/train`` or ``/val``, the per-class cap, whether KA-MIG flips it)."""
    match = SPLIT_RE.fullmatch(split)
    if match is None:
        raise ImageNetError(f"split {split}: expected train or test, optionally -<k>pc (train-50pc)")
    base = os.environ.get(IMAGENET_ENV)
    if not base:
        raise ImageNetError(f"split {split}: set ${IMAGENET_ENV} to a folder holding train/ and val/ (ImageNet's layout)")
    per_class = int(match["per_class"]) if match["per_class"] else None
    if per_class == 0:
        raise ImageNetError(f"split {split}: the images per class must be >= 1")
    return Path(base) / FOLDERS[match["split"]], per_class, FLIPPED[match["split"]]


def stack_token_maps(tokenizer: Any, size: int, num_classes: int) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """A :class:`~migbench.api.DatasetSpec` ``token_maps(split, device)`` of ImageNet for a stack
    whose ``tokenizer`` takes ``size`` px crops (ADM's, KA-MIG's): ids (M', N) int64 and labels
    (M',) of ``split`` (:func:`split_folder`), the train split's flipped maps appended after its
    maps (M' = 2M), as KA-MIG builds its graphs from both. The tokenizer's weight sha256 is
    computed at the first call."""
    known: dict[str, str] = {}

    def maps(split: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        root, per_class, flip = split_folder(split)
        if "sha256" not in known:
            known["sha256"] = tokenizer_sha256(tokenizer)
        labels, ids, flipped = token_maps(root, tokenizer, known["sha256"], size, flip, per_class=per_class,
                                          num_classes=num_classes, device=device)
        if flipped is None:
            return ids.long(), labels
        return torch.cat([ids, flipped]).long(), torch.cat([labels, labels])

    return maps


def main(argv: list[str] | None = None) -> int:
    """Fill the token-map cache of a registered stack's split (the sharded step)."""
    from migbench import registry

    parser = argparse.ArgumentParser(prog="python -m migbench.backbones.common.imagenet_tokens",
                                     description="tokenise ImageNet for a stack (under accelerate launch: sharded)")
    parser.add_argument("stack", help="a registered stack with ImageNet token maps (autonat_l, ...)")
    parser.add_argument("split", help="train or test, optionally -<k>pc (train-50pc)")
    args = parser.parse_args(argv)
    stack = registry.backbone(args.stack)()
    if stack.dataset.token_maps is None:
        parser.error(f"stack {args.stack} has no token maps")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ids, _ = stack.dataset.token_maps(args.split, device)
    if _processes()[1] == 0:
        print(f"{args.stack} {args.split}: {tuple(ids.shape)} token maps cached under {cache_dir() / 'tokens'}")
    return 0


def imagenet_with_tokens(tokenizer: Any, size: int, num_classes: int) -> DatasetSpec:
    """ImageNet at ``size`` px, its first ``num_classes`` classes, with token maps of ``tokenizer``
    (:func:`stack_token_maps`: ADM's centre crop, as KA-MIG tokenises, and the train split's
    flipped copy, from ``$MIGBENCH_IMAGENET``): what a public family's stacks describe their data
    with, so `migbench fit` can train a method's parts on ImageNet."""
    data = imagenet_data(size)
    return replace(data, class_names=data.class_names[:num_classes],
                               token_maps=stack_token_maps(tokenizer, size, num_classes))


if __name__ == "__main__":
    raise SystemExit(main())
