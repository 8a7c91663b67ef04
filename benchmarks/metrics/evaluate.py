"""The one evaluator: torch-fidelity metrics on uint8 samples against a hashed reference set.

Features come from a torch-fidelity feature extractor (``fmnist-classifier`` by default; the
ImageNet path uses ``inception-v3-compat``) on a device of the caller's choosing (each process of
a sweep uses its own), in fp32 with cuDNN deterministic and TF32 off, batch by batch:
:func:`extract_batch` gives the features of one batch, :func:`extract` of many images. FID, IS,
KID and precision/recall are computed by torch-fidelity's own metric functions on those features
(:func:`metrics_from_features`; precision/recall on the GPU where there is one). Two entry points
share it: :func:`evaluate` takes images, :func:`evaluate_features` takes features extracted
elsewhere (a sweep's processes extract their own batches and gather only features), and both
give the same numbers for the same features. Features depend on the extraction batch in the last
bits (the CNN's kernels differ by batch size), so `migbench eval` of a sweep's samples equals its
row exactly only with the sweep's batch size (``evaluate(..., batch_size=)``). Reference features are cached under
``<cache>/refs`` by the *content* hash of the reference images, the extractor's weight hash and
the image normalisation, never by name alone. Every result carries its provenance.

References: ``fmnist-train``/``fmnist-test``; an ADM-layout ``.npz`` (``arr_0`` images, optional
``arr_1`` labels, optional ``mu``/``sigma``: ADM's reference batches hold 10,000 images beside
the statistics of the whole set, so FID uses the statistics and precision/recall the 10k
images); or a folder of real images, streamed (:mod:`.folder_reference`: ``imagenet-val-256``
through ``$MIGBENCH_IMAGENET``, or ``DIR@256``).

Image normalisation (``Extractor.image_normalisation``, applied to samples and references alike
before the extractor): ``none``, or ``minmax``, valeoai's per-image min-max stretch
(:func:`normalise_images`).

Samples: uint8 (N, H, W, C), C in {1, 3}, the layout of ``samples.npz``'s ``arr_0``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_fidelity
from migbench.backbones.fmnist.data import CLASS_NAMES, load_split
from migbench.benchmarks.metrics.diversity import density_coverage, per_class_scores
from migbench.benchmarks.metrics.fmnist_classifier import (
    EXTRACTOR_NAME,
    FEATURE_LAYER,
    LOGITS_LAYER,
    FMNISTFeatureExtractor,
)
from migbench.benchmarks.metrics.loading import CLASSIFIER
from torch_fidelity.metric_fid import (
    KEY_METRIC_FID,
    fid_features_to_statistics,
    fid_statistics_to_metric,
)
from torch_fidelity.metric_isc import (
    KEY_METRIC_ISC_MEAN,
    KEY_METRIC_ISC_STD,
    isc_features_to_metric,
)
from torch_fidelity.metric_kid import (
    KEY_METRIC_KID_MEAN,
    KEY_METRIC_KID_STD,
    kid_features_to_metric,
)
from torch_fidelity.metric_prc import (
    KEY_METRIC_PRECISION,
    KEY_METRIC_RECALL,
    prc_features_to_metric,
)
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor

from migbench import weights
from migbench.config import content_hash, stable_hash
from migbench.images import NORMALISATIONS, minmax_quantize
from migbench.paths import cache_dir

INCEPTION_WEIGHTS_ENV = "MIGBENCH_INCEPTION_WEIGHTS"  # a local copy of torch-fidelity's Inception weights
PRC_REFERENCE_SIZE = 10_000  # precision/recall use at most this many reference images (ADM: 10k)
RNG_SEED = 2020  # torch-fidelity's default seed for IS splits and KID subsets
IS_SPLITS = 10
PRC_NEIGHBORHOOD = 3  # k of precision/recall and density/coverage
MIN_SAMPLES = IS_SPLITS  # IS needs an image per split (fewer: NaN); k-NN metrics need more than k
FMNIST_IMAGE_SIZE = (32, 32)  # what fmnist-classifier scores: Fashion-MNIST padded like the reference


class EvaluationError(ValueError):
    """Samples or references of the wrong shape, type or range, or an empty set."""


def check_samples(images: np.ndarray, what: str = "samples", minimum: int = 2) -> None:
    """uint8 (N, H, W, C), N >= ``minimum``, C in {1, 3}; raises EvaluationError otherwise."""
    if not isinstance(images, np.ndarray):
        raise EvaluationError(f"{what} must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise EvaluationError(f"{what} must be uint8 in [0, 255] (quantise with migbench.images.quantize), "
                              f"got {images.dtype}")
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        raise EvaluationError(f"{what} must have shape (N, H, W, C) with C in (1, 3), got {images.shape}")
    if images.shape[0] < minimum:
        raise EvaluationError(f"{what}: need at least {minimum} images, got {images.shape[0]}")


def check_count(n: int, what: str = "samples") -> None:
    """Raise EvaluationError when ``n`` is below :data:`MIN_SAMPLES`, the fewest every metric can
    be computed from (IS splits the samples into 10; precision/recall, density and coverage need
    more than k = 3 neighbours; with fewer, torch-fidelity writes NaN or fails deep inside)."""
    if n < MIN_SAMPLES:
        raise EvaluationError(f"{what}: need at least {MIN_SAMPLES} images (IS uses {IS_SPLITS} splits; "
                              f"precision/recall/density/coverage need more than k = {PRC_NEIGHBORHOOD}), "
                              f"got {n}")


def check_labels(labels: np.ndarray, n: int, classes: int | None) -> None:
    """Raise EvaluationError unless ``labels`` are ``n`` integers in ``[0, classes)`` (any integer
    when ``classes`` is None: an extractor whose logits are not the classes)."""
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise EvaluationError(f"{labels.shape[0] if labels.ndim else 0} labels of dtype {labels.dtype} "
                              f"for {n} samples: need {n} integer labels")
    if classes is not None and n and (labels.min() < 0 or labels.max() >= classes):
        raise EvaluationError(f"labels must be classes 0..{classes - 1}, got values in "
                              f"[{labels.min()}, {labels.max()}]")


def _ensure_registered() -> None:
    if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(EXTRACTOR_NAME, FMNISTFeatureExtractor)


@dataclass(frozen=True)
class Extractor:
    """A torch-fidelity extractor with its layers for FID/KID/PR and for IS, and its weights id."""

    name: str
    feature_layer: str
    logits_layer: str
    weights_id: str
    weights_path: str | None = None
    image_normalisation: str = "none"  # one of NORMALISATIONS, applied to every image before the network

    def __post_init__(self) -> None:
        if self.image_normalisation not in NORMALISATIONS:
            raise EvaluationError(f"image normalisation {self.image_normalisation!r}: use one of "
                                  f"{', '.join(NORMALISATIONS)}")

    @staticmethod
    def fmnist(image_normalisation: str = "none") -> Extractor:
        return Extractor(EXTRACTOR_NAME, FEATURE_LAYER, LOGITS_LAYER,
                         weights.manifest_entry(CLASSIFIER)["sha256"], image_normalisation=image_normalisation)

    @staticmethod
    def inception(weights_path: str | None = None, image_normalisation: str = "none") -> Extractor:
        """ImageNet-scale: ``inception-v3-compat`` (pool3 2048 for FID, unbiased logits for IS).

        ``weights_path`` (else ``$MIGBENCH_INCEPTION_WEIGHTS``) is a local copy of torch-fidelity's
        Inception weights (``weights-inception-2015-12-05-6726825d.pth``) for offline use, identified
        by its sha256; without either, torch-fidelity loads them from $TORCH_HOME/hub/checkpoints,
        downloading them there first if they are missing.
        """
        option = "--inception-weights"
        if not weights_path and os.environ.get(INCEPTION_WEIGHTS_ENV):
            weights_path, option = os.environ[INCEPTION_WEIGHTS_ENV], f"${INCEPTION_WEIGHTS_ENV}"
        if weights_path and not Path(weights_path).is_file():
            raise EvaluationError(f"{option} {weights_path}: no such file (give a local copy of "
                                  "torch-fidelity's Inception weights, or leave it out to download them)")
        ident = (weights.sha256_file(Path(weights_path)) if weights_path
                 else f"torch-fidelity-{torch_fidelity.__version__}-default-inception")
        return Extractor("inception-v3-compat", "2048", "logits_unbiased", ident, weights_path, image_normalisation)

    @staticmethod
    def named(name: str, weights_path: str | None = None, image_normalisation: str = "none") -> Extractor:
        """The extractor a suite or a stack's data names: ``fmnist-classifier`` or ``inception-v3-compat``."""
        if name == EXTRACTOR_NAME:
            return Extractor.fmnist(image_normalisation)
        if name == "inception-v3-compat":
            return Extractor.inception(weights_path, image_normalisation)
        raise EvaluationError(f"unknown feature extractor {name!r}: use {EXTRACTOR_NAME} or inception-v3-compat")

    def describe(self) -> dict[str, str]:
        """The extractor's identity (run hashes, reference caches); the normalisation only when it
        is not ``none``, so rows and caches from before it was a choice keep their hashes."""
        out = {"extractor": self.name, "feature_layer": self.feature_layer,
               "logits_layer": self.logits_layer, "extractor_weights": self.weights_id}
        if self.image_normalisation != "none":
            out["image_normalisation"] = self.image_normalisation
        return out


def normalise_images(images: np.ndarray, how: str) -> np.ndarray:
    """uint8 (B, H, W, C) as the extractor sees them under normalisation ``how``: ``none``
    unchanged; ``minmax`` valeoai's per-image stretch (:func:`migbench.images.minmax_quantize`),
    applied upstream to the real images as ToTensor floats in [0, 1] and to the decoder's
    unclamped output. On uint8 real images this is exactly upstream's arithmetic; samples a sweep
    made under ``minmax`` were already stretched from the unclamped output
    (:func:`migbench.images.decode_images`), where it is the identity."""
    if how == "none":
        return images
    return minmax_quantize(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0).numpy()


def default_device() -> torch.device:
    """The current CUDA device where there is one, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """Full fp32 on CUDA (no TF32 in convolutions or matrix products), deterministic cuDNN
    algorithms chosen without autotuning; the previous settings come back afterwards. A no-op
    on the CPU. Under it, a batch's features depend only on the batch and the GPU model."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = True, False, False, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved


@lru_cache(maxsize=4)
def _module(extractor: Extractor, device: str) -> torch.nn.Module:
    _ensure_registered()
    kwargs: dict[str, Any] = {"verbose": False}
    if extractor.weights_path:
        kwargs["feature_extractor_weights_path"] = extractor.weights_path
    try:
        module = create_feature_extractor(extractor.name, [extractor.feature_layer, extractor.logits_layer],
                                          cuda=False, **kwargs)
    except Exception as err:  # torch.load of a file that is no checkpoint raises what its bytes make it raise
        if not extractor.weights_path:
            raise
        raise EvaluationError(f"--inception-weights: file {extractor.weights_path} is not torch-fidelity's "
                              f"Inception weights ({type(err).__name__}: {err})") from None
    return module.to(device)


@torch.no_grad()
def extract_batch(images: np.ndarray, extractor: Extractor,
                  device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Features {layer: (B, D)} of one batch of uint8 images (B, H, W, C), B >= 1, on the host in
    the extractor's own dtype (float32 for Inception, float64 for ``fmnist-classifier``), computed
    on ``device`` (default: :func:`default_device`) in one forward pass, fp32, no autocast.

    ``fmnist-classifier`` scores grey 32x32 images; other sizes are refused rather than converted
    (28x28 images must be padded as the reference is), and so is RGB whose channels differ (the
    network reads channel 0 only), while grey stored as three equal channels is taken as grey.
    Grey images are replicated to the three channels torch-fidelity expects. The extractor's
    ``image_normalisation`` (:func:`normalise_images`) is applied first."""
    check_samples(images, minimum=1)
    if extractor.name == EXTRACTOR_NAME:
        if images.shape[1:3] != FMNIST_IMAGE_SIZE:
            raise EvaluationError(f"{extractor.name} scores 32x32 images, got {images.shape}: pad 28x28 "
                                  "Fashion-MNIST by 2 pixels a side, as the reference is")
        if images.shape[3] == 3 and not (np.array_equal(images[..., 0], images[..., 1])
                                         and np.array_equal(images[..., 0], images[..., 2])):
            raise EvaluationError(f"{extractor.name} scores grey images (it reads channel 0 only); these "
                                  "RGB images differ between channels: convert them to grey first")
    device = torch.device(device) if device is not None else default_device()
    module = _module(replace(extractor, image_normalisation="none"), str(device))  # one network for both
    x = torch.from_numpy(normalise_images(images, extractor.image_normalisation)).permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    with exact_fp32():
        feats = module.convert_features_tuple_to_dict(module(x.contiguous().to(device)))
    return {name: feats[name].cpu() for name in (extractor.feature_layer, extractor.logits_layer)}


def extract(images: np.ndarray, extractor: Extractor, batch_size: int = 500,
            device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Features {layer: (N, D) float64} of uint8 images (N, H, W, C), N >= 2, extracted
    ``batch_size`` at a time by :func:`extract_batch` on ``device``."""
    check_samples(images)
    parts = [extract_batch(images[start:start + batch_size], extractor, device)
             for start in range(0, len(images), batch_size)]
    return {name: torch.cat([part[name] for part in parts]).double() for name in parts[0]}


@dataclass(frozen=True)
class Reference:
    """A reference image set: its name, images (uint8 NHWC), labels and content hash.

    ``statistics`` holds ADM-style ``mu``/``sigma`` of the whole reference when its ``.npz``
    carries them: FID then uses them (as published numbers do), while KID and precision/recall
    use the images. A folder reference holds no images (``images`` None: they are streamed,
    :mod:`.folder_reference`), always its labels, and the ``preprocessing`` its sha256 covers.
    """

    name: str
    images: np.ndarray | None
    labels: np.ndarray | None
    sha256: str
    statistics: dict[str, np.ndarray] | None = None
    preprocessing: dict[str, Any] | None = None

    @property
    def count(self) -> int:
        """The number of reference images."""
        return len(self.images) if self.images is not None else len(self.labels)


def fmnist_images(split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A Fashion-MNIST split as the images samples are compared with: uint8 (N, 32, 32, 1), padded."""
    ds = load_split(split, data_dir)
    return np.pad(ds.images, ((0, 0), (2, 2), (2, 2)))[..., None], ds.labels


KNOWN_REFERENCES = ("use fmnist-train, fmnist-test, the path of an ADM-layout .npz of images (arr_0), "
                    "or a folder with its crop size: imagenet-val-256, imagenet-train-256[-50pc][-torchvision], DIR@256")


def npz_path(name: str, option: str = "--ref") -> Path:
    """The file of a ``.npz`` reference name, with ``~`` and ``$VARIABLES`` expanded, so a suite
    can name one by where each machine keeps it (``$MIGBENCH_ADM_REFS/VIRTUAL_imagenet256_labeled.npz``);
    the name, unexpanded, is what rows record. An unset variable is refused in one line."""
    expanded = os.path.expandvars(os.path.expanduser(name))
    if "$" in expanded:
        raise EvaluationError(f"{option} {name}: {expanded[expanded.index('$'):].split('/')[0]} is not set "
                              "(export it: the folder holding the reference file)")
    return Path(expanded)


def check_reference(name: str, data_dir: str | None = None, option: str = "--ref") -> None:
    """Refuse (one line naming ``option``) a reference that could not be loaded, before any
    work: an unknown name, a path that is no file, a file that is no ``.npz`` archive with images
    ``arr_0``, Fashion-MNIST that cannot be found, or a folder reference that cannot be listed.
    Only the archive's index, or the folder's listing, is read."""
    import zipfile

    from migbench.benchmarks.metrics import folder_reference  # imports this module

    if name in ("fmnist-train", "fmnist-test"):
        load_split(name.split("-")[1], data_dir)
        return
    if folder_reference.is_folder_reference(name):
        folder_reference.check(name, option)
        return
    if not name.endswith(".npz"):
        raise EvaluationError(f"{option} {name!r}: unknown reference; {KNOWN_REFERENCES}")
    path = npz_path(name, option)
    if not path.is_file():
        raise EvaluationError(f"{option} {name}: no such file (give the path of an ADM-layout .npz of images)")
    try:
        with np.load(path) as data:
            files = data.files
    except (OSError, EOFError, ValueError, AttributeError, zipfile.BadZipFile) as err:
        raise EvaluationError(f"{option}: file {name} is not a valid reference .npz ({type(err).__name__}: {err})") \
            from None
    if "arr_0" not in files:
        raise EvaluationError(f"{option}: file {name} has no arr_0 (ADM layout: arr_0 images, arr_1 labels)")


def reference(name: str, data_dir: str | None = None) -> Reference:
    """``fmnist-train`` (60k), ``fmnist-test`` (10k), or an ADM-layout ``.npz`` of images, in
    memory (a folder reference is streamed: :func:`reference_with_features`)."""
    from migbench.benchmarks.metrics import folder_reference  # imports this module

    if folder_reference.is_folder_reference(name):
        raise EvaluationError(f"reference {name} is a folder: its images are streamed for their features "
                              "(reference_with_features), never loaded whole")
    if name in ("fmnist-train", "fmnist-test"):
        images, labels = fmnist_images(name.split("-")[1], data_dir)
    elif name.endswith(".npz") and npz_path(name, "reference").is_file():
        from migbench.images import load_samples

        path = npz_path(name, "reference")
        images, labels = load_samples(path)
        with np.load(path) as data:
            has_statistics = "mu" in data and "sigma" in data
        if has_statistics:
            stats = adm_statistics(path)
            check_samples(images, f"reference {name}", MIN_SAMPLES)
            digest = content_hash(images) + hashlib.sha256(stats["mu"].tobytes() + stats["sigma"].tobytes()).hexdigest()
            return Reference(name, images, labels, hashlib.sha256(digest.encode()).hexdigest(), stats)
    else:
        raise EvaluationError(f"unknown reference {name!r}: {KNOWN_REFERENCES}")
    check_samples(images, f"reference {name}", MIN_SAMPLES)
    return Reference(name, images, labels, content_hash(images))


def feature_cache_path(sha256: str, extractor: Extractor) -> Path:
    """Where the features of the reference with content hash ``sha256`` are cached for
    ``extractor`` (its name, layers, weights and image normalisation)."""
    ident = stable_hash({"extractor": extractor.describe(), "torch_fidelity": torch_fidelity.__version__})
    return cache_dir() / "refs" / f"{sha256[:16]}-{extractor.name}-{ident}.pt"


def load_features(path: Path) -> dict[str, torch.Tensor] | None:
    """Cached features {layer: (N, D)}, or None when there are none at ``path``."""
    return torch.load(path, map_location="cpu") if path.exists() else None


def save_features(path: Path, features: dict[str, torch.Tensor]) -> None:
    """Write ``features`` to ``path`` atomically (a temporary file renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(features, tmp)
    os.replace(tmp, path)


def reference_features(ref: Reference, extractor: Extractor) -> dict[str, torch.Tensor]:
    """Features of an in-memory ``ref``, cached by (content hash, extractor, extractor weights,
    image normalisation)."""
    if ref.images is None:
        raise EvaluationError(f"reference {ref.name} is a folder: its features come from reference_with_features")
    path = feature_cache_path(ref.sha256, extractor)
    feats = load_features(path)
    if feats is None:
        feats = extract(ref.images, extractor)
        save_features(path, feats)
    return feats


def reference_with_features(name: str, extractor: Extractor, data_dir: str | None = None,
                            device: torch.device | str | None = None) -> tuple[Reference, dict[str, torch.Tensor]]:
    """The reference ``name`` and its features {layer: (N, D) float64}, cached: a folder
    reference streamed (:func:`.folder_reference.folder_features`, on ``device``), any other
    loaded by :func:`reference`. Refused: a normalisation other than ``none`` against ADM
    statistics, which were computed from images that were not normalised."""
    from migbench.benchmarks.metrics import folder_reference  # imports this module

    if folder_reference.is_folder_reference(name):
        return folder_reference.folder_features(folder_reference.parse(name), extractor, device)
    ref = reference(name, data_dir)
    if ref.statistics is not None and extractor.image_normalisation != "none":
        raise EvaluationError(f"reference {name} carries ADM statistics of images that were not normalised: "
                              f"image normalisation {extractor.image_normalisation} cannot be compared with "
                              "them (use a folder reference)")
    return ref, reference_features(ref, extractor)


def adm_statistics(path: Path) -> dict[str, np.ndarray]:
    """``mu`` (D,) and ``sigma`` (D, D) from an ADM reference ``.npz``, as float64.

    ADM/MAR stats are float32 or float64; torch-fidelity asserts equal dtypes, so both sides
    are made float64 here.
    """
    with np.load(path) as data:
        if "mu" not in data or "sigma" not in data:
            raise EvaluationError(f"{path} has no mu/sigma arrays (ADM reference statistics)")
        return {"mu": data["mu"].astype(np.float64), "sigma": data["sigma"].astype(np.float64)}


def fid_from_statistics(sample_features: torch.Tensor, stats: dict[str, np.ndarray]) -> float:
    """FID of sample features (N, D) against given statistics, via torch-fidelity."""
    if stats["mu"].shape != (sample_features.shape[1],):
        raise EvaluationError(f"reference statistics have dimension {stats['mu'].shape[0]}, the features "
                              f"{sample_features.shape[1]}: use the extractor the statistics were made with")
    own = fid_features_to_statistics(sample_features.double())
    own = {k: v.astype(np.float64) for k, v in own.items()}
    return float(fid_statistics_to_metric(own, stats, False)[KEY_METRIC_FID])


def metrics_from_features(sample: dict[str, torch.Tensor], ref: dict[str, torch.Tensor],
                          extractor: Extractor, labels: np.ndarray | None = None,
                          kid_subset_size: int = 1000, prc: bool = True,
                          ref_statistics: dict[str, np.ndarray] | None = None,
                          ref_labels: np.ndarray | None = None,
                          device: torch.device | str | None = None) -> dict[str, Any]:
    """FID, IS, KID, precision/recall (torch-fidelity), density/coverage (``prdc``, same features
    and k), class accuracy and per-class scores (``per_class``, :mod:`.diversity`) from features
    {layer: (N, D) float64} of the samples and of the reference.

    FID uses ``ref_statistics`` (ADM ``mu``/``sigma``) when given, else the reference features;
    per-class FID splits the reference by ``ref_labels``, else by the network's prediction.
    Precision/recall (N x 10k distances) run on ``device`` (default: :func:`default_device`), in
    fp32 without TF32; the rest on the CPU.

    Refused with EvaluationError: fewer than :data:`MIN_SAMPLES` samples or references, labels
    that are not one integer class of the metrics network per sample, and a metric that comes
    out NaN or infinite (never recorded as a result).
    """
    fl, ll = extractor.feature_layer, extractor.logits_layer
    n, n_ref = len(sample[fl]), len(ref[fl])
    check_count(n)
    check_count(n_ref, "reference")
    if labels is not None:
        check_labels(labels, n, sample[ll].shape[1] if extractor.name == EXTRACTOR_NAME else None)
    out: dict[str, float] = {}
    stats = ref_statistics or {k: v.astype(np.float64) for k, v in fid_features_to_statistics(ref[fl]).items()}
    out["fid"] = fid_from_statistics(sample[fl], stats)
    isc = isc_features_to_metric(sample[ll], splits=IS_SPLITS, shuffle=True, rng_seed=RNG_SEED)
    out["is_mean"], out["is_std"] = isc[KEY_METRIC_ISC_MEAN], isc[KEY_METRIC_ISC_STD]
    kid = kid_features_to_metric(sample[fl], ref[fl], kid_subsets=100,
                                 kid_subset_size=min(kid_subset_size, n, n_ref), rng_seed=RNG_SEED,
                                 verbose=False)
    out["kid_mean"], out["kid_std"] = kid[KEY_METRIC_KID_MEAN], kid[KEY_METRIC_KID_STD]
    if prc:
        ref_prc = ref[fl]
        if len(ref_prc) > PRC_REFERENCE_SIZE:
            pick = torch.randperm(len(ref_prc), generator=torch.Generator().manual_seed(RNG_SEED))
            ref_prc = ref_prc[pick[:PRC_REFERENCE_SIZE]]
        device = torch.device(device) if device is not None else default_device()
        with exact_fp32():
            pr = prc_features_to_metric(sample[fl].float().to(device), ref_prc.float().to(device),
                                        prc_neighborhood=PRC_NEIGHBORHOOD, prc_batch_size=2000, save_cpu_ram=True,
                                        verbose=False)
        out["precision"], out["recall"] = pr[KEY_METRIC_PRECISION], pr[KEY_METRIC_RECALL]
        out.update(density_coverage(ref_prc.float().numpy(), sample[fl].float().numpy(),
                                    nearest_k=PRC_NEIGHBORHOOD))
    bad = {k: v for k, v in out.items() if not np.isfinite(v)}
    if bad:
        raise EvaluationError(f"metrics {bad} are not finite; no result is recorded")
    if labels is not None and extractor.name == EXTRACTOR_NAME:
        out["class_accuracy"] = float((sample[ll].argmax(1).numpy() == labels).mean())
        out["per_class"] = per_class_scores(sample[fl], sample[ll], labels, ref[fl], ref[ll], ref_labels)
    return out


def evaluate(images: np.ndarray, labels: np.ndarray | None = None, ref: str = "fmnist-train",
             extractor: Extractor | None = None, data_dir: str | None = None,
             prc: bool = True, batch_size: int = 500,
             device: torch.device | str | None = None) -> dict[str, Any]:
    """Every metric of uint8 ``images`` (N, H, W, C) against reference ``ref``, with provenance.

    Features are extracted ``batch_size`` images at a time on ``device`` (default:
    :func:`default_device`), then scored by :func:`evaluate_features`."""
    check_samples(images, minimum=MIN_SAMPLES)
    extractor = extractor or Extractor.fmnist()
    if labels is not None:
        check_labels(labels, len(images), len(CLASS_NAMES) if extractor.name == EXTRACTOR_NAME else None)
    return evaluate_features(extract(images, extractor, batch_size, device), labels, ref, extractor,
                             data_dir, prc, device)


def evaluate_features(features: dict[str, torch.Tensor], labels: np.ndarray | None = None,
                      ref: str = "fmnist-train", extractor: Extractor | None = None,
                      data_dir: str | None = None, prc: bool = True,
                      device: torch.device | str | None = None) -> dict[str, Any]:
    """Every metric of samples given by their features against reference ``ref``, with provenance.

    ``features`` are {feature layer: (N, D), logits layer: (N, K)} of ``extractor`` (any float
    dtype; used as float64), in the samples' order, with ``labels`` (N,) in the same order: what
    :func:`extract` gives for the images, so the metrics equal :func:`evaluate`'s for them when
    both extracted with the same batch size.
    ``device`` is where precision/recall run, and a folder reference's features are extracted
    when they are not cached (default: :func:`default_device`).
    """
    extractor = extractor or Extractor.fmnist()
    layers = (extractor.feature_layer, extractor.logits_layer)
    if any(layer not in features for layer in layers):
        raise EvaluationError(f"features must hold the layers {layers} of {extractor.name}, got {tuple(features)}")
    n = len(features[extractor.feature_layer])
    if n < MIN_SAMPLES or len(features[extractor.logits_layer]) != n:
        raise EvaluationError(f"need features of at least {MIN_SAMPLES} samples, the same number in both "
                              f"layers, got {tuple(len(features[layer]) for layer in layers)}")
    reference_set, reference_feats = reference_with_features(ref, extractor, data_dir, device)
    sample = {layer: features[layer].double() for layer in layers}
    metrics = metrics_from_features(sample, reference_feats, extractor, labels,
                                    prc=prc, ref_statistics=reference_set.statistics,
                                    ref_labels=reference_set.labels, device=device)
    return {"metrics": metrics, "provenance": provenance(extractor, reference_set, n)}


def provenance(extractor: Extractor, ref: Reference, n: int) -> dict[str, Any]:
    """Everything that must match for two rows to be comparable; a folder reference adds
    ``reference_preprocessing`` (content sha256, crop, size, layout, per-class cap, classes)."""
    out = {"evaluator": "torch-fidelity", "evaluator_version": torch_fidelity.__version__,
           **extractor.describe(), "image_normalisation": extractor.image_normalisation,
           "reference": ref.name, "reference_sha256": ref.sha256,
           "reference_n": ref.count, "n": int(n), "kid_subsets": 100,
           "fid_reference": "npz mu/sigma" if ref.statistics is not None else "reference features",
           "prc_reference_n": int(min(ref.count, PRC_REFERENCE_SIZE)), "prc_neighborhood": PRC_NEIGHBORHOOD,
           "isc_splits": IS_SPLITS, "torch": torch.__version__}
    if ref.preprocessing is not None:
        out["reference_preprocessing"] = ref.preprocessing
    return out
