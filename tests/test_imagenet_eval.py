"""The ImageNet evaluation path without real data, on the CPU: a fake ImageNet folder of generated
JPEGs and PNGs (three wnids, odd sizes), a fake ADM ``.npz``, and an Inception network with
random weights written at test time in the layout torch-fidelity's
``feature_extractor_weights_path`` loads (its plain state dict), so the whole path runs offline:
folder reference -> ADM centre crop -> streamed features (cached by content) -> FID/IS/KID/PR.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from migbench.backbones.common import imagenet
from migbench.backbones.common.imagenet import (
    adm_center_crop,
    list_folder,
    read_crops,
    torchvision_center_crop,
)
from migbench.benchmarks.metrics import evaluate as ev
from migbench.benchmarks.metrics import folder_reference as fr
from migbench.benchmarks.metrics.random_inception import write_random_inception
from migbench.benchmarks.suite import SuiteError, parse_suite
from migbench.benchmarks.sweep import provenance_key
from PIL import Image

from migbench import cli
from migbench.labels import balanced_labels

WNIDS = ("n01440764", "n01443537", "n01484850")
SIZES = ((37, 23), (23, 41), (64, 50), (30, 30))  # (width, height): landscape, portrait, box-halved, square
SIZE = 16  # crop size of the fake references (Inception resizes to 299 inside whatever it is given)


def write_image(path: Path, width: int, height: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    Image.fromarray(pixels).save(path, quality=90) if path.suffix == ".JPEG" else Image.fromarray(pixels).save(path)


def fake_split(root: Path, counts: tuple[int, ...] = (4, 3, 3), seed: int = 0) -> Path:
    """``root/<wnid>/<wnid>_<j>.JPEG|.png``: 10 images of odd sizes over three classes."""
    for label, (wnid, count) in enumerate(zip(WNIDS, counts, strict=True)):
        (root / wnid).mkdir(parents=True)
        for j in range(count):
            width, height = SIZES[(label + j) % len(SIZES)]
            write_image(root / wnid / f"{wnid}_{j}.{'JPEG' if j % 2 == 0 else 'png'}", width, height,
                        seed * 100 + label * 10 + j)
    return root


@pytest.fixture
def fake_imagenet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$MIGBENCH_IMAGENET`` with train/ and val/ in wnid subfolders; a fresh cache."""
    root = tmp_path / "imagenet"
    fake_split(root / "train", (5, 4, 4), seed=1)
    fake_split(root / "val")
    monkeypatch.setenv("MIGBENCH_IMAGENET", str(root))
    monkeypatch.setenv("MIGBENCH_CACHE", str(tmp_path / "cache"))
    return root


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """torch-fidelity's ``inception-v3-compat`` with seeded random weights (features O(1))."""
    return str(write_random_inception(tmp_path_factory.mktemp("inception") / "weights-inception-random.pth"))


def crops_of(folder: Path, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    listed = list_folder(folder)
    batches = list(read_crops(listed, size, 100, hashlib.sha256()))
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


# -- data description, labels -------------------------------------------------------------------


def test_imagenet_data_description() -> None:
    spec = imagenet.IMAGENET
    assert spec.num_classes == 1000 and len(set(spec.class_names)) == 1000
    assert spec.class_names[:2] == ("tench", "goldfish") and spec.class_names[-1] == "toilet tissue"
    assert (spec.name, spec.reference, spec.extractor) == ("imagenet-256", "imagenet-val-256", "inception-v3-compat")
    assert spec.references == ("imagenet-val-256", "imagenet-train-256")
    assert not spec.floors and spec.token_maps is None
    assert imagenet.imagenet_data(512).reference == "imagenet-val-512"


def test_50k_samples_are_50_per_class() -> None:
    """Sample i has label i mod C: exactly 50 of each of the 1000 classes at N = 50,000, and every
    sampling batch of 250 holds 250 distinct classes."""
    labels = balanced_labels(50_000, 1000)
    assert torch.equal(torch.bincount(labels, minlength=1000), torch.full((1000,), 50))
    assert all(len(set(labels[j:j + 250].tolist())) == 250 for j in range(0, 50_000, 250))


# -- ADM's centre crop --------------------------------------------------------------------------


def test_center_crop_box_halves_then_cuts_the_centre() -> None:
    """16x32 of 4x4 blocks, size 4: BOX-halved twice (short side 16 >= 8, then 8 >= 8) gives the
    4x8 block values exactly; no bicubic change at scale 1; columns (8 - 4) // 2 = 2 onwards."""
    base = np.random.default_rng(0).integers(0, 256, (4, 8, 3), np.uint8)
    image = Image.fromarray(np.repeat(np.repeat(base, 4, 0), 4, 1))
    np.testing.assert_array_equal(adm_center_crop(image, 4), base[:, 2:6])


def test_center_crop_portrait_takes_rows_from_the_floor_of_half_the_excess() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (11, 6, 3), np.uint8)  # H 11, W 6: rows (11 - 6) // 2 = 2..7
    np.testing.assert_array_equal(adm_center_crop(Image.fromarray(pixels), 6), pixels[2:8])


@pytest.mark.parametrize(("size_wh", "crop", "steps", "left"), [
    ((37, 23), 16, [((26, 16), Image.BICUBIC)], 5),  # 37 * 16 / 23 = 25.7 -> 26 wide; (26 - 16) // 2 = 5
    ((70, 50), 20, [((35, 25), Image.BOX), ((28, 20), Image.BICUBIC)], 4),  # 50 >= 40: halve; 35 * 0.8 = 28
])
def test_center_crop_resizes_as_adm(size_wh: tuple[int, int], crop: int, steps: list, left: int) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (size_wh[1], size_wh[0], 3), np.uint8)
    image = Image.fromarray(pixels)
    for size, resample in steps:
        image = image.resize(size, resample=resample)
    expected = np.asarray(image)[:, left:left + crop]
    np.testing.assert_array_equal(adm_center_crop(Image.fromarray(pixels), crop), expected)


def test_center_crop_makes_rgb() -> None:
    grey = Image.fromarray(np.full((9, 9), 7, np.uint8))
    out = adm_center_crop(grey, 9)
    assert out.shape == (9, 9, 3) and out.dtype == np.uint8 and (out == 7).all()


@pytest.mark.parametrize("size_wh", [(37, 23), (23, 41), (64, 50), (30, 30), (33, 16)])
def test_torchvision_crop_is_valeoais_resize_and_center_crop(size_wh: tuple[int, int]) -> None:
    """valeoai's val transform, Resize(16) + CenterCrop(16) on the PIL image, run by torchvision."""
    from torchvision import transforms

    pixels = np.random.default_rng(3).integers(0, 256, (size_wh[1], size_wh[0], 3), np.uint8)
    expected = transforms.Compose([transforms.Resize(16), transforms.CenterCrop((16, 16))])(Image.fromarray(pixels))
    np.testing.assert_array_equal(torchvision_center_crop(Image.fromarray(pixels), 16), np.asarray(expected))


def test_reference_names() -> None:
    ref = fr.parse("/data/imagenet/val@256-50pc-torchvision")
    assert (ref.root, ref.size, ref.per_class, ref.crop) == (Path("/data/imagenet/val"), 256, 50, "torchvision")
    assert ref.describe("c")["crop"] == "torchvision-resize-center-crop"
    assert fr.parse("x@512").describe("c") == {"content_sha256": "c", "crop": "adm-center-crop", "size": 512}
    assert not fr.is_folder_reference("imagenet-val") and not fr.is_folder_reference("x@256-bicubic")


# -- per-image min-max normalisation ------------------------------------------------------------


def test_minmax_normalisation_by_hand() -> None:
    """valeoai's remap: (x/255 - min) / (max - min) * 255, truncated, per image over all channels."""
    images = np.array([[0, 100, 200], [50, 51, 250], [7, 7, 7]], np.uint8).reshape(3, 1, 3, 1)
    out = ev.normalise_images(images, "minmax")
    # 100 / 200 * 255 = 127.5 -> 127; (51 - 50) / 200 * 255 = 1.275 -> 1; a constant image -> 0
    np.testing.assert_array_equal(out.reshape(3, 3), [[0, 127, 255], [0, 1, 255], [0, 0, 0]])
    # one image 1x2x3, min 10 and max 60 over all channels: (x - 10) / 50 * 255 = 0, 51, 102, 153, 204, 255
    # in exact arithmetic, but in float32 (30/255 - 10/255) / (50/255) * 255 = 101.99999: upstream's
    # truncating uint8 cast makes it 101, and so does ours
    rgb = np.array([[[[10, 20, 30], [40, 50, 60]]]], np.uint8)
    np.testing.assert_array_equal(ev.normalise_images(rgb, "minmax"), [[[[0, 51, 101], [153, 204, 255]]]])
    assert ev.normalise_images(images, "none") is images


def test_normalisation_enters_identity_only_when_chosen(inception_weights: str) -> None:
    plain = ev.Extractor.inception(inception_weights)
    minmax = ev.Extractor.inception(inception_weights, "minmax")
    assert "image_normalisation" not in plain.describe()  # rows from before the option keep their hashes
    assert minmax.describe()["image_normalisation"] == "minmax"
    assert ev.feature_cache_path("ab" * 32, plain) != ev.feature_cache_path("ab" * 32, minmax)
    row = {"evaluator": "torch-fidelity", "evaluator_version": "0.4.0", "extractor": "x", "feature_layer": "2048",
           "extractor_weights": "w", "reference_sha256": "r", "n": 10}
    assert provenance_key(row) == provenance_key({**row, "image_normalisation": "none"})
    assert provenance_key(row) != provenance_key({**row, "image_normalisation": "minmax"})
    with pytest.raises(ev.EvaluationError, match="image normalisation 'zscore': use one of none, minmax"):
        ev.Extractor.inception(inception_weights, "zscore")


def test_suite_key_image_normalisation() -> None:
    runs = [{"label": "a", "methods": ["maskgit"]}]
    assert parse_suite({"backbone": "toy", "runs": runs}).image_normalisation == "none"
    assert parse_suite({"backbone": "toy", "image_normalisation": "minmax", "runs": runs}).image_normalisation == "minmax"
    with pytest.raises(SuiteError, match="image_normalisation must be one of none, minmax, got 'max'"):
        parse_suite({"backbone": "toy", "image_normalisation": "max", "runs": runs})


# -- the folder reader --------------------------------------------------------------------------


def test_folder_listing_labels_and_subsets(fake_imagenet: Path) -> None:
    val = list_folder(fake_imagenet / "val")
    assert val.wnids == WNIDS and val.layout == "wnid subfolders"
    assert val.files[0] == "n01440764/n01440764_0.JPEG" and list(val.files) == sorted(val.files)
    assert val.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    two = list_folder(fake_imagenet / "train", per_class=2)
    assert two.labels.tolist() == [0, 0, 1, 1, 2, 2] and two.files[:2] == ("n01440764/n01440764_0.JPEG",
                                                                          "n01440764/n01440764_1.png")


def test_flat_val_with_kaggle_labels(tmp_path: Path) -> None:
    flat = tmp_path / "val"
    flat.mkdir()
    rows = ["ImageId,PredictionString"]
    for i, wnid in enumerate((WNIDS[2], WNIDS[0], WNIDS[2])):
        write_image(flat / f"ILSVRC2012_val_{i:08d}.JPEG", 20, 17, i)
        rows.append(f"ILSVRC2012_val_{i:08d},{wnid} 1 2 3 4 {wnid} 5 6 7 8")
    rows.append(f"ILSVRC2012_val_00000099,{WNIDS[1]} 1 2 3 4")  # a wnid without a file here still counts
    (tmp_path / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    listed = list_folder(flat)
    assert listed.wnids == WNIDS and listed.labels.tolist() == [2, 0, 2] and listed.layout.startswith("flat")


def test_content_hash_follows_the_bytes(fake_imagenet: Path) -> None:
    def digest() -> str:
        h = hashlib.sha256()
        for _ in read_crops(list_folder(fake_imagenet / "val"), SIZE, 4, h, workers=2):
            pass
        return h.hexdigest()

    first = digest()
    assert digest() == first
    target = fake_imagenet / "val" / WNIDS[1] / f"{WNIDS[1]}_1.png"
    write_image(target, 23, 41, 999)
    assert digest() != first


def test_folder_features_are_cached_by_content(fake_imagenet: Path, inception_weights: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The first call reads and extracts; the second reads no file; a changed file is read again
    and gives another reference sha256. (Features here: per-image channel means, not Inception.)"""
    calls = []

    def fake_extract(images: np.ndarray, extractor: ev.Extractor, device: object = None) -> dict[str, torch.Tensor]:
        calls.append(len(images))
        means = torch.from_numpy(images.reshape(len(images), -1, 3).mean(1)).float()
        return {"2048": means, "logits_unbiased": means}

    monkeypatch.setattr(fr, "extract_batch", fake_extract)
    extractor = ev.Extractor.inception(inception_weights)
    ref, feats = fr.folder_features(fr.parse("imagenet-val-16"), extractor)
    assert calls == [10] and ref.count == 10 and ref.images is None and feats["2048"].dtype == torch.float64
    assert ref.preprocessing["crop"] == "adm-center-crop" and ref.preprocessing["size"] == SIZE
    monkeypatch.setattr(fr, "read_crops", lambda *a, **k: pytest.fail("the cache was not used"))
    again, cached = fr.folder_features(fr.parse(f"{fake_imagenet / 'val'}@16"), extractor)
    assert again.sha256 == ref.sha256 and torch.equal(cached["2048"], feats["2048"]) and calls == [10]
    monkeypatch.setattr(fr, "read_crops", read_crops)
    write_image(fake_imagenet / "val" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG", 37, 23, 12345)
    changed, _ = fr.folder_features(fr.parse("imagenet-val-16"), extractor)
    assert calls == [10, 10] and changed.sha256 != ref.sha256
    other_size, _ = fr.folder_features(fr.parse("imagenet-val-17"), extractor)
    assert calls == [10, 10, 10] and other_size.sha256 != changed.sha256  # the crop size is part of the identity
    other_crop, _ = fr.folder_features(fr.parse("imagenet-val-16-torchvision"), extractor)
    assert calls == [10, 10, 10, 10] and other_crop.sha256 != changed.sha256  # and so is the crop
    subset, _ = fr.folder_features(fr.parse("imagenet-train-16-2pc"), extractor)
    assert subset.count == 6 and subset.preprocessing["per_class"] == 2


# -- the whole path, offline --------------------------------------------------------------------


def test_folder_reference_whole_path(fake_imagenet: Path, inception_weights: str) -> None:
    """The reference's own crops scored against it: FID 0, precision and recall 1."""
    extractor = ev.Extractor.inception(inception_weights)
    crops, labels = crops_of(fake_imagenet / "val")
    result = ev.evaluate(crops, labels, "imagenet-val-16", extractor, batch_size=500, device="cpu")
    metrics, prov = result["metrics"], result["provenance"]
    _, ref_feats = ev.reference_with_features("imagenet-val-16", extractor)  # cached by now
    spread = float(np.trace(np.cov(ref_feats["2048"].numpy(), rowvar=False)))
    assert spread > 1.0 and abs(metrics["fid"]) < 1e-4 * spread and abs(metrics["kid_mean"]) < 1e-2
    assert metrics["precision"] == 1.0 and metrics["recall"] == 1.0 and np.isfinite(metrics["is_mean"])
    assert prov["reference"] == "imagenet-val-16" and prov["reference_n"] == 10
    assert prov["image_normalisation"] == "none" and prov["fid_reference"] == "reference features"
    assert prov["reference_preprocessing"]["layout"] == "wnid subfolders"
    assert prov["extractor_weights"] == ev.weights.sha256_file(Path(inception_weights))


def test_adm_npz_reference(tmp_path: Path, inception_weights: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ADM layout: FID against the file's mu/sigma, KID and precision/recall against its images."""
    monkeypatch.setenv("MIGBENCH_CACHE", str(tmp_path / "cache"))
    extractor = ev.Extractor.inception(inception_weights)
    images = np.random.default_rng(5).integers(0, 256, (10, SIZE, SIZE, 3), np.uint8)
    feats = ev.extract(images, extractor, device="cpu")
    f = feats["2048"].numpy()
    np.savez(tmp_path / "VIRTUAL_fake.npz", arr_0=images, arr_1=np.arange(10) % 3,
             mu=f.mean(0).astype(np.float32), sigma=np.cov(f, rowvar=False))
    result = ev.evaluate_features(feats, None, str(tmp_path / "VIRTUAL_fake.npz"), extractor, device="cpu")
    assert result["provenance"]["fid_reference"] == "npz mu/sigma" and result["provenance"]["prc_reference_n"] == 10
    assert abs(result["metrics"]["fid"]) < 1e-3 and result["metrics"]["precision"] == 1.0
    with pytest.raises(ev.EvaluationError, match="carries ADM statistics of images that were not normalised"):
        ev.evaluate_features(feats, None, str(tmp_path / "VIRTUAL_fake.npz"),
                             ev.Extractor.inception(inception_weights, "minmax"))


def test_cli_eval_against_a_folder_with_minmax(fake_imagenet: Path, inception_weights: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGBENCH_INCEPTION_WEIGHTS", inception_weights)
    samples = tmp_path / "samples.npz"
    np.savez(samples, arr_0=np.random.default_rng(6).integers(0, 256, (10, SIZE, SIZE, 3), np.uint8),
             arr_1=np.arange(10) % 3)
    argv = ["eval", str(samples), "--ref", f"{fake_imagenet / 'train'}@16-4pc", "--extractor", "inception-v3-compat",
            "--normalise", "minmax", "--out", str(tmp_path / "eval.json")]
    assert cli.main(argv) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["provenance"]["image_normalisation"] == "minmax" and result["provenance"]["reference_n"] == 12
    assert result["provenance"]["extractor_weights"] == ev.weights.sha256_file(Path(inception_weights))
    assert all(np.isfinite(v) for k, v in result["metrics"].items() if not isinstance(v, dict))


# -- bad inputs: one line each ------------------------------------------------------------------


def test_a_folder_reference_is_never_loaded_whole() -> None:
    with pytest.raises(ev.EvaluationError, match="reference imagenet-val-256 is a folder: its images are streamed"):
        ev.reference("imagenet-val-256")


BAD_FOLDERS = [
    (["--ref", "imagenet-val-256"], "--ref imagenet-val-256: set $MIGBENCH_IMAGENET to a folder holding train/ and val/"),
    (["--ref", "imagenet-val"], "--ref 'imagenet-val': unknown reference"),
    (["--ref", "imagenet-val-0"], "the crop size and the images per class must be >= 1"),
    (["--ref", "{root}/nowhere@32"], "--ref {root}/nowhere@32: {root}/nowhere: no such folder"),
    (["--ref", "{root}/empty@32"], "{root}/empty holds no images (.jpeg, .jpg, .png) directly or in wnid subfolders"),
    (["--ref", "{root}/flat@32"], "{root}/flat holds images but no wnid subfolders, and no LOC_val_solution.csv"),
    (["--ref", "{root}/mixed@32"], "{root}/mixed mixes images (stray.png, ...) with wnid subfolders"),
    (["--ref", "{root}/broken@32"], "reference {root}/broken@32: file {root}/broken/n01443537/n01443537_1.png is not "
                                    "a readable image (not a format PIL knows)"),
    (["--ref", "{root}/truncated@32"], "is not a readable image (OSError: "),
    (["--normalise", "max"], "argument --normalise: invalid choice: 'max'"),
]


@pytest.mark.parametrize(("options", "fragment"), BAD_FOLDERS)
def test_bad_folder_references_are_one_line(options: list[str], fragment: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MIGBENCH_IMAGENET", raising=False)
    monkeypatch.setenv("MIGBENCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    (root / "empty" / "n01440764").mkdir(parents=True)
    (root / "flat").mkdir()
    write_image(root / "flat" / "a.png", 9, 9, 0)
    fake_split(root / "mixed")
    write_image(root / "mixed" / "stray.png", 9, 9, 0)
    fake_split(root / "broken")
    (root / "broken" / WNIDS[1] / f"{WNIDS[1]}_1.png").write_text("not an image\n")
    fake_split(root / "truncated")
    jpeg = root / "truncated" / WNIDS[0] / f"{WNIDS[0]}_2.JPEG"
    jpeg.write_bytes(jpeg.read_bytes()[:400])
    samples = tmp_path / "samples.npz"
    np.savez(samples, arr_0=np.zeros((12, 32, 32, 1), np.uint8))
    assert cli.main(["eval", str(samples), "--out", str(tmp_path / "eval.json"),
                     *(o.format(root=root) for o in options)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("migbench eval: "), err
    assert fragment.format(root=root) in err[0], err
    assert not (tmp_path / "eval.json").exists()


def test_a_suite_sweeps_the_imagenet_path_end_to_end(fake_imagenet: Path, inception_weights: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``imagenet256_smoke``'s three runs on the tiny valeoai stack (same modules, 32 px), against
    the fake validation folder with valeoai's min-max normalisation: samples from the decoder's
    unclamped output, features, metrics, rows with their provenance, and a report."""
    from migbench.benchmarks.report import report
    from migbench.benchmarks.results import read_rows
    from migbench.benchmarks.suite import load_suite
    from migbench.benchmarks.sweep import sweep

    monkeypatch.setenv("MIGBENCH_INCEPTION_WEIGHTS", inception_weights)
    smoke = load_suite("imagenet256_smoke")
    suite = parse_suite({"name": "imagenet_tiny", "backbone": "valeoai_tiny", "n": 10, "batch_size": 5,
                         "reference": "imagenet-val-32", "image_normalisation": "minmax",
                         "runs": [{"label": p.label, "methods": list(p.recipe.methods), "set": dict(p.overrides)}
                                  for p in smoke.points]})
    folder = sweep(suite, results_root=tmp_path / "results", progress=False)
    rows = read_rows(folder)
    assert [r["label"] for r in rows] == ["maskgit valeoai", "maskgit google", "halton"]
    for row in rows:
        p = row["provenance"]
        assert p["reference"] == "imagenet-val-32" and p["image_normalisation"] == "minmax"
        assert p["weights"] == {"valeoai_tiny": "random-seed0"} and p["n"] == 10
        assert np.isfinite(row["metrics"]["fid"])
    assert report("imagenet_tiny", tmp_path / "results", tmp_path / "reports").is_file()
