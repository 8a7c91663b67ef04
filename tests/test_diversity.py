"""Density/coverage against the prdc package and by hand; per-class scores; their place in the metrics."""

import contextlib
import io

import numpy as np
import pytest
import torch
from migbench.benchmarks.metrics import evaluate as ev
from migbench.benchmarks.metrics.diversity import density_coverage, per_class_scores
from migbench.benchmarks.metrics.fmnist_classifier import (
    EXTRACTOR_NAME,
    FEATURE_LAYER,
    LOGITS_LAYER,
)
from prdc import compute_prdc

FAKE = ev.Extractor(EXTRACTOR_NAME, FEATURE_LAYER, LOGITS_LAYER, "random-test-weights")


def package_values(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the set sizes
        return compute_prdc(real, fake, nearest_k=k)


def test_density_coverage_by_hand() -> None:
    # 1-D, k = 1: radii 1, 1, 1, 8. Samples 0.5 (in the balls of 0 and 1), 10.5 (in 10's), 20 (none):
    # density = 3 / (1 * 3) = 1, coverage = 3 of 4 real points have a sample in their ball
    real = np.array([[0.0], [1.0], [2.0], [10.0]], np.float32)
    fake = np.array([[0.5], [10.5], [20.0]], np.float32)
    assert density_coverage(real, fake, nearest_k=1) == {"density": 1.0, "coverage": 0.75}


@pytest.mark.parametrize("n,m,dim,shift,block", [(300, 200, 16, 0.0, 2000), (257, 431, 8, 0.7, 50),
                                                 (120, 90, 4, 3.0, 7)])
def test_density_coverage_equal_the_prdc_package(n, m, dim, shift, block) -> None:
    rng = np.random.default_rng(n)
    real = rng.standard_normal((n, dim)).astype(np.float32)
    fake = (1.3 * rng.standard_normal((m, dim)) + shift).astype(np.float32)
    expected = package_values(real, fake, 3)
    got = density_coverage(real, fake, nearest_k=3, block=block)
    assert got["density"] == pytest.approx(expected["density"], abs=1e-12)
    assert got["coverage"] == pytest.approx(expected["coverage"], abs=1e-12)


def test_metrics_carry_density_coverage_on_the_precision_recall_features(monkeypatch) -> None:
    monkeypatch.setattr(ev, "PRC_REFERENCE_SIZE", 150)  # the same reference subset as precision/recall
    gen = torch.Generator().manual_seed(0)
    sample = {FEATURE_LAYER: torch.randn(120, 8, generator=gen, dtype=torch.float64) + 0.4,
              LOGITS_LAYER: torch.randn(120, 10, generator=gen, dtype=torch.float64)}
    ref = {FEATURE_LAYER: torch.randn(400, 8, generator=gen, dtype=torch.float64),
           LOGITS_LAYER: torch.randn(400, 10, generator=gen, dtype=torch.float64)}
    result = ev.metrics_from_features(sample, ref, FAKE)
    pick = torch.randperm(400, generator=torch.Generator().manual_seed(ev.RNG_SEED))[:150]
    expected = package_values(ref[FEATURE_LAYER][pick].float().numpy(), sample[FEATURE_LAYER].float().numpy(), 3)
    assert result["density"] == pytest.approx(expected["density"], abs=1e-12)
    assert result["coverage"] == pytest.approx(expected["coverage"], abs=1e-12)
    assert "density" not in ev.metrics_from_features(sample, ref, FAKE, prc=False)


def one_hot(classes: np.ndarray, num: int = 3) -> torch.Tensor:
    logits = torch.zeros(len(classes), num, dtype=torch.float64)
    logits[torch.arange(len(classes)), torch.from_numpy(classes)] = 5.0
    return logits


def test_per_class_scores() -> None:
    gen = torch.Generator().manual_seed(1)
    labels = np.array([0] * 40 + [1] * 40 + [2])  # class 2: one sample, no FID
    predicted = labels.copy()
    predicted[:10] = 1  # a quarter of class 0 looks like class 1
    features = torch.randn(len(labels), 4, generator=gen, dtype=torch.float64) + torch.from_numpy(labels)[:, None]
    ref_labels = np.arange(300) % 3
    ref_features = torch.randn(300, 4, generator=gen, dtype=torch.float64) + torch.from_numpy(ref_labels)[:, None]
    ref_predicted = ref_labels.copy()
    ref_predicted[:30] = 2  # the network errs on the reference too: 10 of class 0 and 10 of class 1
    result = per_class_scores(features, one_hot(predicted), labels, ref_features, one_hot(ref_predicted), ref_labels)
    assert result["class_accuracy"] == [0.75, 1.0, 1.0]
    assert result["n"] == [40, 40, 1] and result["n_reference"] == [100, 100, 100]
    assert result["feature_dim"] == 4 and result["reference_classes"] == "labels"
    for c in (0, 1):
        expected = ev.fid_from_statistics(features[labels == c], {
            k: v.astype(np.float64) for k, v in ev.fid_features_to_statistics(ref_features[ref_labels == c]).items()})
        assert result["fid"][c] == pytest.approx(expected, rel=1e-9)
    assert result["fid"][2] is None
    without = per_class_scores(features, one_hot(predicted), labels, ref_features, one_hot(ref_predicted))
    assert without["reference_classes"] == "predicted" and without["n_reference"] == [90, 90, 120]


def test_metrics_carry_per_class_scores_with_labels() -> None:
    gen = torch.Generator().manual_seed(2)
    labels = np.arange(60) % 3
    sample = {FEATURE_LAYER: torch.randn(60, 4, generator=gen, dtype=torch.float64), LOGITS_LAYER: one_hot(labels)}
    result = ev.metrics_from_features(sample, sample, FAKE, labels=labels, prc=False)
    assert result["per_class"]["class_accuracy"] == [1.0, 1.0, 1.0]
    assert result["per_class"]["fid"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)
    assert "per_class" not in ev.metrics_from_features(sample, sample, FAKE, prc=False)
