"""Loading the committed metrics network (sha256-checked through the weights manifest)."""

from __future__ import annotations

from functools import lru_cache

from migbench.benchmarks.metrics.fmnist_classifier import FMNISTClassifier

from migbench import weights

CLASSIFIER = "fmnist_classifier"


@lru_cache(maxsize=1)
def _cached(sha256: str) -> FMNISTClassifier:
    state, _ = weights.load_weights(CLASSIFIER)
    net = FMNISTClassifier()
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


def load_classifier() -> FMNISTClassifier:
    """The committed classifier in eval mode (cached per weight hash)."""
    return _cached(weights.manifest_entry(CLASSIFIER)["sha256"])
