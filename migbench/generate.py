"""Generating N samples with a stack and a recipe, in fixed-size, independently seeded batches.

Sample i has label ``balanced_labels(N, C)[i]`` and belongs to batch ``i // batch_size``, whose noise
all comes from ``batch_generator(seed, j)``. A process with index p of P runs the batches
j = p, p + P, ...; :func:`merge` puts the pieces back in index order. The result is therefore the
same for any number of processes (tested with 1 and 2).

With a ``sink``, each batch is handed over as soon as it is quantised (a :class:`Batch`) and not
kept: a sweep evaluates it there and then, so no process ever holds all images.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from migbench.api import NULL_LABEL, Stack
from migbench.images import NORMALISATIONS, decode_images
from migbench.labels import balanced_labels
from migbench.precision import autocast
from migbench.precision import resolve as resolve_precision
from migbench.recipe import Recipe, build_sampler
from migbench.rng import batch_generator


@dataclass
class Generation:
    """Samples of one run (or one process's share): uint8 (n, H, W, C), labels (n,), indices (n,).

    Made with a ``sink``, it holds no images: ``images`` is (0, H, W, C)."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    nfe_per_image: dict[str, float]
    sampling_seconds: float
    extra_parameters: dict[str, dict[str, int]] = field(default_factory=dict)
    precision: str = "fp32"
    head_dtype: str = "auto"

    @property
    def images_per_second(self) -> float:
        return len(self.indices) / self.sampling_seconds if self.sampling_seconds > 0 else float("nan")


@dataclass(frozen=True)
class Batch:
    """Batch ``index`` (j) as it leaves the quantiser: uint8 images (B, H, W, C), labels (B,) and
    sample indices (B,) = j * batch_size + arange(B), all on the host."""

    index: int
    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray


def check_count(n: int, what: str) -> None:
    """Refuse (ValueError naming ``what``) ``n`` samples whose int64 labels alone (8 bytes each,
    allocated up front) exceed this machine's memory: one line before any work, not an
    allocation failure midway."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): let the allocation decide
        return
    if 8 * n > memory:
        raise ValueError(f"{what} = {n:,} samples: their labels alone need {8 * n / 2**30:,.0f} GiB, more than "
                         f"this machine's {memory / 2**30:,.0f} GiB; sample fewer")


def generate(stack: Stack, recipe: Recipe, n: int, seed: int, *, batch_size: int = 250,
             device: str | torch.device = "cpu", process_index: int = 0, num_processes: int = 1,
             precision: str = "auto", head_dtype: str = "auto", progress: bool = True,
             labels: torch.Tensor | None = None, sink: Callable[[Batch], None] | None = None,
             compile_backbone: bool = False, image_normalisation: str = "none") -> Generation:
    """Sample this process's share of ``n`` images (all of them when ``num_processes == 1``).

    ``precision`` (auto, bf16, fp16, fp32) is resolved for ``device`` by
    :func:`migbench.precision.resolve`; the precision used is returned in the Generation.
    With ``sink``, every batch goes to ``sink`` in batch order and is not kept (the Generation
    holds labels and indices but no images); time spent in ``sink`` is not sampling time.
    ``compile_backbone`` runs the backbone passes through ``torch.compile(dynamic=False)``
    (:meth:`Sampler.compile_backbone`; off by default). ``image_normalisation`` is how ids become
    uint8 images (:func:`migbench.images.decode_images`: ``none``, or valeoai's per-image
    ``minmax`` of the decoder's unclamped output)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if image_normalisation not in NORMALISATIONS:
        raise ValueError(f"image normalisation must be one of {', '.join(NORMALISATIONS)}, got {image_normalisation!r}")
    device = torch.device(device)
    used = resolve_precision(precision, device)
    all_labels = balanced_labels(n, stack.backbone.layout.num_classes) if labels is None else labels
    if all_labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(all_labels.shape)}")
    num_classes = stack.backbone.layout.num_classes
    if int(all_labels.min()) < NULL_LABEL or int(all_labels.max()) >= num_classes:
        raise ValueError(f"labels must be class ids in [0, {num_classes}) or {NULL_LABEL} (unconditional)")
    stack.backbone.to(device)
    tokenizer = stack.tokenizer.to(device)
    sampler = build_sampler(recipe, stack)
    if compile_backbone:
        sampler.compile_backbone()
    batches = list(range(process_index, -(-n // batch_size), num_processes))
    images, labels_out, indices = [], [], []
    sink_seconds = 0.0
    started = time.perf_counter()
    for j in tqdm(batches, desc=f"sampling {recipe.label()}", disable=not progress, leave=False):
        idx = torch.arange(j * batch_size, min(n, (j + 1) * batch_size))
        batch_labels = all_labels[idx].to(device)
        with autocast(used, device, head_dtype):
            ids = sampler(batch_labels, batch_generator(seed, j, device))
        batch_images = decode_images(tokenizer, ids, image_normalisation).cpu().numpy()
        labels_out.append(batch_labels.cpu().numpy())
        indices.append(idx.numpy())
        if sink is None:
            images.append(batch_images)
        else:
            handed = time.perf_counter()
            sink(Batch(j, batch_images, labels_out[-1], indices[-1]))
            sink_seconds += time.perf_counter() - handed
    seconds = time.perf_counter() - started - sink_seconds
    c, h, w = tokenizer.image_shape
    empty = np.zeros((0, h, w, c), np.uint8)
    return Generation(images=np.concatenate(images) if images else empty,
                      labels=np.concatenate(labels_out) if labels_out else np.zeros(0, np.int64),
                      indices=np.concatenate(indices) if indices else np.zeros(0, np.int64),
                      nfe_per_image=sampler.nfe_per_image(), sampling_seconds=seconds,
                      extra_parameters=sampler.extra_parameters, precision=used, head_dtype=head_dtype)


def merge(parts: list[Generation]) -> Generation:
    """Join the shares of several processes in sample-index order; costs add up over processes.

    Shares made with a ``sink`` hold no images, and neither does their merge."""
    indices = np.concatenate([p.indices for p in parts])
    order = np.argsort(indices, kind="stable")
    if not np.array_equal(indices[order], np.arange(len(indices))):
        raise ValueError("the parts do not cover the sample indices exactly once")
    images = np.concatenate([p.images for p in parts])
    if len(images) not in (0, len(indices)):
        raise ValueError("some parts hold their images and others were made with a sink")
    total = sum(len(p.indices) for p in parts)
    kinds = {k for p in parts for k in p.nfe_per_image}
    nfe = {k: sum(p.nfe_per_image.get(k, 0.0) * len(p.indices) for p in parts) / total for k in kinds}
    return Generation(images=images[order] if len(images) else images,
                      labels=np.concatenate([p.labels for p in parts])[order], indices=indices[order],
                      nfe_per_image=nfe, sampling_seconds=max(p.sampling_seconds for p in parts),
                      extra_parameters=parts[0].extra_parameters, precision=parts[0].precision,
                      head_dtype=parts[0].head_dtype)
