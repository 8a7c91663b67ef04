"""ImageNet token maps on the CPU, without real data: the fake ImageNet folders of
``test_imagenet_eval.py`` (generated JPEGs and PNGs of odd sizes over three wnids) tokenised by
``autonat_tiny`` (32 px crops -> 16x16 tokens of 64 codes, random weights): the maps equal a
direct tokenisation of KA-MIG's crop, the flipped copy is the tokenisation of the mirrored crops,
the cache is used the second time and keyed by content, shards merge to the one-process maps,
and `migbench fit ka_mig --backbone autonat_tiny --set graphs_only=true` builds its graphs from
them.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from migbench.backbones.autonat import autonat_tiny
from migbench.backbones.common import imagenet_tokens as it
from migbench.backbones.common.imagenet import ImageNetError, adm_center_crop, list_folder
from PIL import Image

from migbench import cli, weights

_spec = importlib.util.spec_from_file_location("_imagenet_eval", Path(__file__).with_name("test_imagenet_eval.py"))
_eval = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_eval)
fake_split, write_image = _eval.fake_split, _eval.write_image


@pytest.fixture
def fake_imagenet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$MIGBENCH_IMAGENET`` with train/ (13 images) and val/ (10) in wnid subfolders; a fresh
    cache and weights folder; blocks of 4 files, so a split is several blocks."""
    root = tmp_path / "imagenet"
    fake_split(root / "train", (5, 4, 4), seed=1)
    fake_split(root / "val")
    monkeypatch.setenv("MIGBENCH_IMAGENET", str(root))
    monkeypatch.setenv("MIGBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MIGBENCH_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(it, "BLOCK", 4)
    return root


def direct(tokenizer: torch.nn.Module, folder: Path, mirror: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (M, 256) and labels (M,): every image of ``folder`` through ADM's crop at 32 px
    (mirrored left-right first with ``mirror``), /255, encoded in one batch."""
    listed = list_folder(folder)
    crops = []
    for rel in listed.files:
        with Image.open(folder / rel) as image:
            crop = adm_center_crop(image, 32)
        crops.append(crop[:, ::-1] if mirror else crop)
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    return tokenizer.encode(images), torch.from_numpy(listed.labels)


def cached_files(cache: Path) -> list[Path]:
    return sorted((cache / "tokens" / "imagenet").glob("*.safetensors"))


def test_train_maps_are_the_crops_then_their_mirror_images(fake_imagenet: Path) -> None:
    stack = autonat_tiny()
    ids, labels = stack.dataset.token_maps("train", "cpu")
    plain, plain_labels = direct(stack.tokenizer, fake_imagenet / "train")
    mirrored, _ = direct(stack.tokenizer, fake_imagenet / "train", mirror=True)
    assert ids.dtype == torch.int64 and ids.shape == (26, 256)
    assert torch.equal(ids[:13], plain) and torch.equal(ids[13:], mirrored)
    assert not torch.equal(plain, mirrored)
    assert torch.equal(labels, torch.cat([plain_labels, plain_labels])) and labels.tolist()[:13] == [0] * 5 + [1] * 4 + [2] * 4
    val_ids, val_labels = stack.dataset.token_maps("test", "cpu")  # val: no flipped copy
    assert torch.equal(val_ids, direct(stack.tokenizer, fake_imagenet / "val")[0]) and len(val_labels) == 10
    first, _ = stack.dataset.token_maps("train-2pc", "cpu")  # the first 2 of each class, then their flips
    assert torch.equal(first[:6], plain[[0, 1, 5, 6, 9, 10]]) and torch.equal(first[6:], mirrored[[0, 1, 5, 6, 9, 10]])


def test_the_cache_is_used_the_second_time_and_keyed_by_content(fake_imagenet: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    stack = autonat_tiny()
    ids, labels = stack.dataset.token_maps("train", "cpu")
    files = cached_files(tmp_path / "cache")
    assert len(files) == 2  # the crops' maps and the flipped maps
    stored = weights_of(files)
    assert {t["ids"].dtype for t in stored} == {torch.int16}
    assert not list((tmp_path / "cache").rglob("*.tmp")) and not list((tmp_path / "cache").rglob("parts/*"))

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("an image was read")

    with monkeypatch.context() as patch:
        patch.setattr(it, "read_blocks", no_reading)
        again, again_labels = autonat_tiny().dataset.token_maps("train", "cpu")  # a fresh stack, same weights
    assert torch.equal(again, ids) and torch.equal(again_labels, labels)
    # another tokenizer: other maps, under another key
    other, _ = autonat_tiny(seed=1).dataset.token_maps("train", "cpu")
    assert not torch.equal(other, ids) and len(cached_files(tmp_path / "cache")) == 4
    # one file's content changed (same name): read again, a new key; its maps change, the others not
    changed = fake_imagenet / "train" / "n01443537" / "n01443537_1.png"
    write_image(changed, 23, 41, seed=99)
    os.utime(changed, ns=(1, 1))
    fresh, _ = stack.dataset.token_maps("train", "cpu")
    assert len(cached_files(tmp_path / "cache")) == 6
    assert not torch.equal(fresh[6], ids[6]) and torch.equal(fresh[:6], ids[:6]) and torch.equal(fresh[7:13], ids[7:13])


def weights_of(files: list[Path]) -> list[dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return [load_file(str(f)) for f in files]


def test_shards_merge_by_block_index_into_the_one_process_maps(fake_imagenet: Path) -> None:
    """Three processes' shares (blocks 0, 3 | 1 | 2 of 4), through their part files, merge into
    the one process's maps and content sha256."""
    tokenizer = autonat_tiny().tokenizer
    folder = list_folder(fake_imagenet / "train")
    one = it._merge([it._encode_share(folder, tokenizer, 32, "adm", True, "cpu", 0, 1, "")], True)
    parts = []
    for rank in range(3):
        path = it._part_path(folder, rank)
        it._save_part(it._encode_share(folder, tokenizer, 32, "adm", True, "cpu", rank, 3, ""), path)
        parts.append(it._load_part(path))
    assert [p["blocks"] for p in parts] == [[0, 3], [1], [2]]
    merged = it._merge(parts, True)
    assert merged[0] == one[0] and torch.equal(merged[1], one[1]) and torch.equal(merged[2], one[2])
    with pytest.raises(RuntimeError, match="blocks missing"):
        it._merge(parts[:2], True)


@pytest.mark.slow
def test_accelerate_launch_fills_the_cache_with_the_one_process_maps(fake_imagenet: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Two CPU processes under ``accelerate launch`` (the module's command line) tokenise 270
    train images, blocks 0 (256 files) and 1 (14 files), and fill the cache with the maps a
    direct tokenisation gives."""
    from migbench.benchmarks.sweep import free_port

    root = tmp_path / "bigger"
    fake_split(root / "train", (90, 90, 90), seed=2)
    monkeypatch.setenv("MIGBENCH_IMAGENET", str(root))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()),
              "-m", "migbench.backbones.common.imagenet_tokens", "autonat_tiny", "train"]
    subprocess.run(launch, env=env, check=True, timeout=300)
    stored = weights_of(cached_files(tmp_path / "cache"))
    tokenizer = autonat_tiny().tokenizer
    expected = [direct(tokenizer, root / "train", mirror)[0] for mirror in (False, True)]
    assert len(stored) == 2 and all(any(torch.equal(t["ids"].long(), e) for t in stored) for e in expected)


def test_split_names_and_a_missing_imagenet_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIGBENCH_IMAGENET", raising=False)
    with pytest.raises(ImageNetError, match=r"^split train: set \$MIGBENCH_IMAGENET"):
        autonat_tiny().dataset.token_maps("train", "cpu")
    monkeypatch.setenv("MIGBENCH_IMAGENET", "/nowhere")
    with pytest.raises(ImageNetError, match="^split val: expected train or test"):
        it.split_folder("val")
    with pytest.raises(ImageNetError, match=">= 1"):
        it.split_folder("train-0pc")


def test_fit_graphs_only_builds_the_graphs_from_imagenet_token_maps(fake_imagenet: Path, tmp_path: Path) -> None:
    """`migbench fit ka_mig --backbone autonat_tiny --set graphs_only=true` builds G_co, G_s, G_p
    from the train maps and their flips; a one-step fit then trains with them."""
    from migbench.methods.ka_mig.graphs import graph_tensors

    assert cli.main(["fit", "ka_mig", "--backbone", "autonat_tiny", "--set", "graphs_only=true",
                     "--run-dir", str(tmp_path / "run")]) == 0
    stack = autonat_tiny()
    saved, _ = weights.load_weights("autonat_tiny_ka_mig_graphs")
    expected = graph_tensors(*stack.dataset.token_maps("train", "cpu"), 64, 10, (16, 16), 0.05)
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in saved)
    assert saved["incompatible"].shape == (10, 256, 64) and saved["co_edge_index"].shape[1] > 0
    assert saved["incompatible"][3:].all()  # classes 3..9 have no images: every token ruled out
    assert cli.main(["fit", "ka_mig", "--backbone", "autonat_tiny", "--set", "steps=1", "--set", "batch_size=4",
                     "--set", "warmup=1", "--run-dir", str(tmp_path / "run2")]) == 0
    entry = weights.manifest_entry("autonat_tiny_ka_mig")
    assert entry["config"]["graphs_sha256"] == weights.manifest_entry("autonat_tiny_ka_mig_graphs")["sha256"]
