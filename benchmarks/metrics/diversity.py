"""Density and coverage, and per-class scores, from the evaluator's features.

**Density and coverage** (Naeem, Oh, Uh, Choi, Yoo, "Reliable Fidelity and Diversity Metrics for
Generative Models", ICML 2020). With real features X_1..X_N, generated features Y_1..Y_M,
k nearest neighbours and B(x, r) the ball of radius r around x, NND_k(X_i) the distance from X_i
to its k-th nearest other real point:

    density  = 1 / (k M) * sum_j sum_i 1[Y_j in B(X_i, NND_k(X_i))]
    coverage = 1 / N     * sum_i 1[exists j: Y_j in B(X_i, NND_k(X_i))]

Density counts how many real neighbourhoods hold each sample (1 on average when samples are
distributed like the data; above 1 where they crowd into dense regions), so unlike precision it
is not inflated by real outliers; coverage is the share of real neighbourhoods holding at least
one sample, a recall that fake outliers cannot inflate. Both are the ``prdc`` package's (the
authors' implementation, 0.2): its pairwise distances, its k-th-neighbour radii and its strict
``<``, evaluated in blocks of rows so memory stays at ``block x N`` instead of ``N x N`` and
``M x M`` (the package's ``compute_prdc`` also holds the generated set's own distance matrix,
which density and coverage do not need). The evaluator passes the features and k (3) that
precision/recall use, on the same reference subset.

**Per-class scores** of a class-conditional sample set: for each class c, the samples
conditioned on c are scored alone. Class accuracy is the share the metrics network assigns to
c; FID (Heusel et al., NeurIPS 2017, ``||mu_s - mu_r||^2 + Tr(S_s + S_r - 2 (S_s S_r)^(1/2))``,
torch-fidelity's function, as for the overall FID) compares them with the reference images of
class c: by their labels when the caller passes them, else by the class the metrics network
predicts for them (``reference_classes`` in the result says which). The predicted split costs
accuracy: on Fashion-MNIST train it agrees with the labels for 93.7% of images, and real test
images (about 500 per class) score a per-class FID of 0.45-2.5 against the labelled split but 0.8-10.3
against the predicted one (Shirt worst). With n_c samples per class in d feature dimensions the
estimate is also biased upward, the more so the smaller n_c / d; ``feature_dim`` and ``n`` are
stored so reports can say where.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from prdc.prdc import compute_pairwise_distance, get_kth_value
from torch_fidelity.metric_fid import (
    KEY_METRIC_FID,
    fid_features_to_statistics,
    fid_statistics_to_metric,
)

BLOCK_ROWS = 2000  # rows of a distance matrix held at once


def knn_radii(real: np.ndarray, nearest_k: int, block: int = BLOCK_ROWS) -> np.ndarray:
    """NND_k of every real point: the (k+1)-th smallest distance to the real set (the first is
    the point itself), as ``prdc.compute_nearest_neighbour_distances``, one block of rows at a time."""
    return np.concatenate([get_kth_value(compute_pairwise_distance(real[start:start + block], real),
                                         k=nearest_k + 1, axis=-1)
                           for start in range(0, len(real), block)])


def density_coverage(real: np.ndarray, fake: np.ndarray, nearest_k: int,
                     block: int = BLOCK_ROWS) -> dict[str, float]:
    """{"density", "coverage"} of ``fake`` (M, D) against ``real`` (N, D) float32 features with
    ``nearest_k`` neighbours (formulas in the module docstring)."""
    radii = knn_radii(real, nearest_k, block)
    inside = 0
    nearest = np.full(len(real), np.inf, dtype=np.float64)
    for start in range(0, len(fake), block):
        distances = compute_pairwise_distance(real, fake[start:start + block])  # (N, block)
        inside += int((distances < radii[:, None]).sum())
        nearest = np.minimum(nearest, distances.min(axis=1))
    return {"density": inside / (nearest_k * len(fake)), "coverage": float((nearest < radii).mean())}


def _fid(sample: torch.Tensor, ref: torch.Tensor) -> float | None:
    """torch-fidelity's FID of two feature sets (None when either has fewer than 2 rows)."""
    if len(sample) < 2 or len(ref) < 2:
        return None
    one, two = (fid_features_to_statistics(x.double()) for x in (sample, ref))
    return float(fid_statistics_to_metric(one, two, False)[KEY_METRIC_FID])


def per_class_scores(features: torch.Tensor, logits: torch.Tensor, labels: np.ndarray,
                     ref_features: torch.Tensor, ref_logits: torch.Tensor,
                     ref_labels: np.ndarray | None = None) -> dict[str, Any]:
    """Per class c (the logits' columns): class accuracy and FID of the samples labelled c, with
    their counts. The reference is split by ``ref_labels``, or by the metrics network's prediction
    (``ref_logits``) when there are none. Lists are indexed by class; a class with fewer than 2
    samples (or reference images) has FID None, one without samples class accuracy None."""
    labels = np.asarray(labels)
    predicted = logits.argmax(1).numpy()
    ref_classes = ref_logits.argmax(1).numpy() if ref_labels is None else np.asarray(ref_labels)
    accuracy: list[float | None] = []
    fid: list[float | None] = []
    counts, ref_counts = [], []
    for c in range(logits.shape[1]):
        mine, theirs = labels == c, ref_classes == c
        counts.append(int(mine.sum()))
        ref_counts.append(int(theirs.sum()))
        accuracy.append(float((predicted[mine] == c).mean()) if mine.any() else None)
        fid.append(_fid(features[torch.from_numpy(mine)], ref_features[torch.from_numpy(theirs)]))
    return {"class_accuracy": accuracy, "fid": fid, "n": counts, "n_reference": ref_counts,
            "feature_dim": int(features.shape[1]),
            "reference_classes": "predicted" if ref_labels is None else "labels"}
