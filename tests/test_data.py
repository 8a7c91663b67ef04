"""Fashion-MNIST sources, their order, and the missing/corrupt-data errors."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from migbench.backbones.fmnist import data
from migbench.backbones.fmnist.data import DatasetMissingError, load_split

from migbench.labels import balanced_labels


def write_idx(folder: Path, split: str, n: int, value: int = 7) -> None:
    images_name, labels_name = data._FILES[split]
    folder.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 8, 3]) + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    with gzip.open(folder / f"{images_name}.gz", "wb") as f:
        f.write(header + bytes([value]) * (n * 28 * 28))
    with gzip.open(folder / f"{labels_name}.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + bytes([i % 10 for i in range(n)]))


@pytest.fixture
def small_counts(monkeypatch):
    monkeypatch.setattr(data, "_COUNTS", {"train": 20, "test": 10})


def test_explicit_dir_wins_over_env_and_debian(tmp_path, monkeypatch, small_counts) -> None:
    write_idx(tmp_path / "a", "test", 10, value=1)
    write_idx(tmp_path / "b", "test", 10, value=2)
    monkeypatch.setenv("MIGBENCH_DATA", str(tmp_path / "b"))
    assert load_split("test", tmp_path / "a").images[0, 0, 0] == 1
    loaded = load_split("test")
    assert loaded.images[0, 0, 0] == 2 and loaded.source.startswith("MIGBENCH_DATA")


def test_debian_package_is_second(tmp_path, monkeypatch, small_counts) -> None:
    monkeypatch.delenv("MIGBENCH_DATA", raising=False)
    write_idx(tmp_path / "deb", "train", 20, value=3)
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "deb")
    loaded = load_split("train", allow_download=False)
    assert loaded.source.startswith("debian-package") and loaded.images[0, 0, 0] == 3


def test_missing_data_names_all_three_ways(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MIGBENCH_DATA", raising=False)
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "nothing")
    with pytest.raises(DatasetMissingError) as err:
        load_split("train", allow_download=False)
    text = str(err.value)
    assert "--data-dir" in text and "MIGBENCH_DATA" in text
    assert "dataset-fashion-mnist" in text and "torchvision" in text


def test_explicit_dir_without_files_is_an_error(tmp_path) -> None:
    with pytest.raises(DatasetMissingError, match="has no test IDX files"):
        load_split("test", tmp_path)


def test_corrupt_files(tmp_path, small_counts) -> None:
    write_idx(tmp_path, "test", 10)
    images_name = data._FILES["test"][0]
    with gzip.open(tmp_path / f"{images_name}.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 5)
    with pytest.raises(DatasetMissingError, match="corrupt"):
        load_split("test", tmp_path)


def test_wrong_counts(tmp_path, small_counts) -> None:
    write_idx(tmp_path, "test", 9)
    with pytest.raises(DatasetMissingError, match="shapes"):
        load_split("test", tmp_path)


def test_tensors_are_padded_to_32_in_unit_range(tmp_path, small_counts) -> None:
    write_idx(tmp_path, "test", 10, value=255)
    images, labels = load_split("test", tmp_path).tensors()
    assert images.shape == (10, 1, 32, 32) and images.dtype == torch.float32
    assert images[:, :, 2:30, 2:30].min() == 1.0 and images[:, :, :2].max() == 0.0
    assert labels.tolist() == list(range(10))


def test_bad_split() -> None:
    with pytest.raises(ValueError, match="split"):
        load_split("val")


def test_balanced_labels() -> None:
    labels = balanced_labels(25, 10)
    assert labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    counts = np.bincount(balanced_labels(1000, 10).numpy())
    assert (counts == 100).all()
    with pytest.raises(ValueError):
        balanced_labels(-1, 10)
