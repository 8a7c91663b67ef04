"""Loading the committed metrics network (sha256-checked through the weights manifest)."""

from __future__ import annotations

from migbench.benchmarks.metrics.fmnist_classifier import FMNISTClassifier

from migbench import weights

CLASSIFIER = "fmnist_classifier"


def load_classifier() -> FMNISTClassifier:
    """The committed classifier in eval mode (cached per weight hash)."""
    return weights.load_module(CLASSIFIER, lambda entry: FMNISTClassifier())
