"""Quality floors beside every generated number, computed once and cached.

- data floor: N real images that are not in the reference set (test images for the train
  reference, train images otherwise), class-balanced and seeded, scored like samples;
- tokenizer floor: the VQ reconstructions of those same N images.

No generator can beat the data floor at the same N, and none using this tokenizer can beat
its floor; a method's FID is best read as distance above these two.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from migbench.backbones.fmnist.data import NUM_CLASSES
from migbench.backbones.fmnist.loading import TOKENIZER, load_tokenizer
from migbench.benchmarks.metrics.evaluate import Extractor, evaluate, fmnist_images, reference

from migbench import weights
from migbench.config import stable_hash
from migbench.images import quantize
from migbench.paths import cache_dir


def balanced_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of n images, n / C per class (cycling classes), chosen by a seeded permutation."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(NUM_CLASSES)]
    available = min(len(p) for p in per_class) * NUM_CLASSES
    if n > available:
        raise ValueError(f"a class-balanced floor of {n} images needs more than the split holds ({available})")
    counts = [0] * NUM_CLASSES
    picks = []
    for i in range(n):
        c = i % NUM_CLASSES
        picks.append(per_class[c][counts[c]])
        counts[c] += 1
    return np.array(picks)


@torch.no_grad()
def reconstruct(images: np.ndarray, batch: int = 500) -> np.ndarray:
    """uint8 (N, 32, 32, 1) -> their VQ reconstructions, uint8, through the committed tokenizer."""
    tokenizer = load_tokenizer(TOKENIZER)
    out = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(images[start:start + batch]).permute(0, 3, 1, 2).float() / 255.0
        out.append(quantize(tokenizer.decode(tokenizer.encode(x))).numpy())
    return np.concatenate(out)


def floors(n: int, ref: str = "fmnist-train", seed: int = 0, data_dir: str | None = None) -> dict[str, Any]:
    """{"data": {...}, "tokenizer": {...}} evaluation results (metrics + provenance), cached."""
    extractor = Extractor.fmnist()
    ref_set = reference(ref, data_dir)
    key = stable_hash({"n": n, "ref": ref_set.sha256, "extractor": extractor.weights_id, "seed": seed,
                       "tokenizer": weights.manifest_entry(TOKENIZER)["sha256"]})
    path = cache_dir() / "floors" / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    split = "test" if ref == "fmnist-train" else "train"
    images, labels = fmnist_images(split, data_dir)
    pick = balanced_subset(labels, n, seed)
    real, real_labels = images[pick], labels[pick]
    result = {"data": evaluate(real, real_labels, ref, extractor, data_dir),
              "tokenizer": evaluate(reconstruct(real), real_labels, ref, extractor, data_dir),
              "source_split": split, "seed": seed}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)
    return result
