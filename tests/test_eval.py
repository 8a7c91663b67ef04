"""The evaluator: torch-fidelity metrics against hand values and SciPy, caching, errors."""

import numpy as np
import pytest
import scipy.linalg
import torch
from migbench.benchmarks.metrics import evaluate as ev
from migbench.benchmarks.metrics import loading
from migbench.benchmarks.metrics.fmnist_classifier import (
    EXTRACTOR_NAME,
    FEATURE_LAYER,
    LOGITS_LAYER,
    FMNISTClassifier,
)

from migbench.images import quantize

FAKE = ev.Extractor(EXTRACTOR_NAME, FEATURE_LAYER, LOGITS_LAYER, "random-test-weights")


@pytest.fixture
def random_classifier(monkeypatch):
    torch.manual_seed(0)
    net = FMNISTClassifier().eval()
    monkeypatch.setattr(loading, "load_classifier", lambda: net)
    ev._module.cache_clear()
    yield net
    ev._module.cache_clear()


def features(n, d=16, seed=0, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    return {FEATURE_LAYER: torch.randn(n, d, generator=gen, dtype=torch.float64) + shift,
            LOGITS_LAYER: torch.randn(n, 10, generator=gen, dtype=torch.float64)}


def test_fid_of_a_set_against_itself_is_zero() -> None:
    f = features(600)
    assert abs(ev.metrics_from_features(f, f, FAKE, prc=False)["fid"]) < 1e-6


def test_fid_matches_scipy() -> None:
    a, b = features(800, seed=1), features(700, seed=2, shift=0.3)
    x, y = a[FEATURE_LAYER].numpy(), b[FEATURE_LAYER].numpy()
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
    got = ev.metrics_from_features(a, b, FAKE, prc=False)["fid"]
    assert got == pytest.approx(expected, rel=1e-6)


def test_inception_score_of_one_hot_logits_is_k() -> None:
    k, n = 4, 20000
    logits = torch.zeros(n, 10, dtype=torch.float64)
    logits[torch.arange(n), torch.arange(n) % k] = 50.0  # softmax one-hot to 1e-21
    sample = {FEATURE_LAYER: torch.randn(n, 4, dtype=torch.float64), LOGITS_LAYER: logits}
    result = ev.metrics_from_features(sample, sample, FAKE, prc=False)
    assert result["is_mean"] == pytest.approx(k, rel=5e-3)


def test_precision_recall_and_kid_ranges() -> None:
    a, b = features(300, seed=3), features(300, seed=4)
    result = ev.metrics_from_features(a, b, FAKE)
    assert 0.5 < result["precision"] <= 1.0 and 0.5 < result["recall"] <= 1.0
    assert abs(result["kid_mean"]) < 0.05
    far = ev.metrics_from_features(features(300, seed=5, shift=10.0), b, FAKE)
    assert far["precision"] == 0.0 and far["fid"] > 1000


def test_class_accuracy(random_classifier) -> None:
    images = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 1), dtype=np.uint8)
    feats = ev.extract(images, FAKE)
    predicted = feats[LOGITS_LAYER].argmax(1).numpy()
    result = ev.metrics_from_features(feats, feats, FAKE, labels=predicted, prc=False)
    assert result["class_accuracy"] == 1.0
    with pytest.raises(ev.EvaluationError, match="labels"):
        ev.metrics_from_features(feats, feats, FAKE, labels=predicted[:5], prc=False)


def test_extract_accepts_grey_and_rgb(random_classifier) -> None:
    grey = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 1), dtype=np.uint8)
    rgb = np.repeat(grey, 3, axis=3)
    a, b = ev.extract(grey, FAKE), ev.extract(rgb, FAKE)
    assert a[FEATURE_LAYER].shape == (6, 256) and a[FEATURE_LAYER].dtype == torch.float64
    torch.testing.assert_close(a[LOGITS_LAYER], b[LOGITS_LAYER])


def test_reference_cache_is_keyed_by_content(random_classifier, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MIGBENCH_CACHE", str(tmp_path))
    images = np.zeros((4, 32, 32, 1), np.uint8)
    first = ev.Reference("same-name", images, None, ev.content_hash(images))
    changed = images.copy()
    changed[0, 0, 0, 0] = 1
    second = ev.Reference("same-name", changed, None, ev.content_hash(changed))
    assert first.sha256 != second.sha256
    ev.reference_features(first, FAKE)
    ev.reference_features(second, FAKE)
    assert len(list((tmp_path / "refs").glob("*.pt"))) == 2


@pytest.mark.parametrize("bad,match", [
    (np.zeros((4, 32, 32), np.uint8), "shape"),
    (np.zeros((4, 32, 32, 2), np.uint8), "shape"),
    (np.zeros((4, 32, 32, 1), np.float32), "uint8"),
    (np.zeros((0, 32, 32, 1), np.uint8), "at least 2"),
    ([[0]], "numpy array"),
])
def test_bad_samples(bad, match) -> None:
    with pytest.raises(ev.EvaluationError, match=match):
        ev.check_samples(bad)


def test_quantize_is_the_one_conversion() -> None:
    x = torch.tensor([0.0, 0.5, 1.0, 0.2]).reshape(1, 1, 2, 2)
    assert quantize(x).flatten().tolist() == [0, 128, 255, 51]
    assert quantize(x).shape == (1, 2, 2, 1)
    with pytest.raises(ValueError, match="lie in"):
        quantize(x * 2)
    with pytest.raises(ValueError, match="lie in"):
        quantize(torch.full((1, 1, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="floating"):
        quantize(torch.zeros(1, 1, 2, 2, dtype=torch.uint8))


def test_adm_statistics_dtype_handling(tmp_path) -> None:
    f = features(400)[FEATURE_LAYER]
    np.savez(tmp_path / "ref.npz", mu=f.numpy().mean(0).astype(np.float32),
             sigma=np.cov(f.numpy(), rowvar=False).astype(np.float32))
    stats = ev.adm_statistics(tmp_path / "ref.npz")
    assert stats["mu"].dtype == np.float64
    assert ev.fid_from_statistics(f, stats) == pytest.approx(0.0, abs=1e-4)
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(ev.EvaluationError, match="mu/sigma"):
        ev.adm_statistics(tmp_path / "bad.npz")


def test_unknown_reference() -> None:
    with pytest.raises(ev.EvaluationError, match="unknown reference"):
        ev.reference("imagenet-val")


def test_npz_reference_with_statistics_uses_them_for_fid(random_classifier, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MIGBENCH_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (40, 32, 32, 1), dtype=np.uint8)
    feats = ev.extract(images, FAKE)[FEATURE_LAYER].numpy()
    np.savez(tmp_path / "ref.npz", arr_0=images, mu=feats.mean(0) + 1.0, sigma=np.cov(feats, rowvar=False))
    result = ev.evaluate(images, None, str(tmp_path / "ref.npz"), FAKE, prc=False)
    assert result["provenance"]["fid_reference"] == "npz mu/sigma"
    assert result["metrics"]["fid"] == pytest.approx(feats.shape[1] * 1.0, rel=1e-3)  # |mu shift|^2
    np.savez(tmp_path / "wrong.npz", arr_0=images, mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(ev.EvaluationError, match="dimension"):
        ev.evaluate(images, None, str(tmp_path / "wrong.npz"), FAKE, prc=False)


def test_features_entry_point_gives_the_images_entry_points_numbers(random_classifier, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MIGBENCH_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "ref.npz", arr_0=rng.integers(0, 256, (50, 32, 32, 1), dtype=np.uint8))
    images = rng.integers(0, 256, (30, 32, 32, 1), dtype=np.uint8)
    labels = np.arange(30) % 10
    ref = str(tmp_path / "ref.npz")
    from_images = ev.evaluate(images, labels, ref, FAKE, device="cpu")
    feats = ev.extract(images, FAKE, device="cpu")
    assert ev.evaluate_features(feats, labels, ref, FAKE, device="cpu") == from_images  # bit-identical floats
    # the extractor's float32 values, kept in float32 (Inception's dtype), give the same numbers
    as_float32 = {k: v.float() for k, v in feats.items()}
    assert ev.evaluate_features(as_float32, labels, ref, FAKE, device="cpu") == from_images
    # features of the sweep's batches, gathered out of order and put back by sample index
    batches = [np.arange(s, min(30, s + 7)) for s in range(0, 30, 7)]
    shards = [batches[0::2], batches[1::2]]
    parts = [(np.concatenate(b), [ev.extract_batch(images[i], FAKE, "cpu") for i in b]) for b in shards]
    indices = np.concatenate([i for i, _ in parts])
    order = torch.from_numpy(np.argsort(indices))
    merged = {k: torch.cat([f[k] for _, fs in parts for f in fs])[order].double() for k in feats}
    assert ev.evaluate_features(merged, labels, ref, FAKE, device="cpu") == ev.evaluate(
        images, labels, ref, FAKE, batch_size=7, device="cpu")


def test_extract_batch_takes_one_image_and_keeps_the_extractor_dtype(random_classifier) -> None:
    images = np.random.default_rng(5).integers(0, 256, (5, 32, 32, 1), dtype=np.uint8)
    one = ev.extract_batch(images[:1], FAKE, "cpu")
    assert one[FEATURE_LAYER].shape == (1, 256) and one[FEATURE_LAYER].dtype == torch.float64
    assert one[FEATURE_LAYER].device.type == "cpu"
    whole = ev.extract(images, FAKE, batch_size=5, device="cpu")
    batch = ev.extract_batch(images, FAKE, "cpu")
    assert all(torch.equal(whole[k], batch[k]) for k in whole)


def test_evaluate_features_checks_its_input() -> None:
    f = features(10, d=256)
    with pytest.raises(ev.EvaluationError, match="layers"):
        ev.evaluate_features({FEATURE_LAYER: f[FEATURE_LAYER]}, ref="fmnist-test", extractor=FAKE)
    with pytest.raises(ev.EvaluationError, match="at least 10"):
        ev.evaluate_features({k: v[:1] for k, v in f.items()}, ref="fmnist-test", extractor=FAKE)
    with pytest.raises(ev.EvaluationError, match="same number"):
        ev.evaluate_features({FEATURE_LAYER: f[FEATURE_LAYER], LOGITS_LAYER: f[LOGITS_LAYER][:5]},
                             ref="fmnist-test", extractor=FAKE)


def test_exact_fp32_restores_the_backend_settings() -> None:
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    with ev.exact_fp32():
        assert (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32) == (True, False, False, False)
    assert (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32) == before
