"""Public checkpoint handling on tiny random state dicts: import, conversion, records, strict loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from migbench.checkpoints import (
    CheckpointError,
    CheckpointSpec,
    extract_state,
    import_file,
    load_state,
    load_strict,
    record,
)
from migbench.weights import sha256_file


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MIGBENCH_CHECKPOINTS", str(tmp_path / "checkpoints"))
    return tmp_path / "checkpoints"


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))


def training_checkpoint(path: Path, model: nn.Module) -> Path:
    """A file laid out like upstream training checkpoints: DDP prefix, container, optimizer, loss."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module.loss.weight"] = torch.ones(2)
    torch.save({"model_state_dict": state, "optimizer_state_dict": {"step": 3}, "epoch": 7}, path)
    return path


SPEC = CheckpointSpec(name="tiny", source="https://example.org/tiny.pth", licence="MIT",
                      container="model_state_dict", strip=("module.",), ignore=("loss.*",))


def test_import_converts_once_and_records_both_hashes(tmp_path: Path, cache: Path) -> None:
    model = tiny()
    source = training_checkpoint(tmp_path / "tiny.pth", model)
    converted = import_file(SPEC, source)
    entry = record("tiny")
    assert converted == cache / "tiny.safetensors" and entry["sha256"] == sha256_file(converted)
    assert entry["source_sha256"] == sha256_file(source) and entry["source_bytes"] == source.stat().st_size
    assert entry["pinned"] is False and not list(cache.glob("*.tmp"))
    state, _ = load_state("tiny")
    fresh = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    load_strict(fresh, state, "tiny")
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_pinned_size_or_hash_refuses_another_file(tmp_path: Path) -> None:
    source = training_checkpoint(tmp_path / "tiny.pth", tiny())
    size = source.stat().st_size
    with pytest.raises(CheckpointError, match=f"has {size:,} bytes, the known file {size + 1:,} .a truncated"):
        import_file(CheckpointSpec("tiny", "x", "MIT", size=size + 1, container="model_state_dict"), source)
    with pytest.raises(CheckpointError, match="another checkpoint or a corrupted download"):
        import_file(CheckpointSpec("tiny", "x", "MIT", sha256="0" * 64, container="model_state_dict"), source)
    pinned = CheckpointSpec("tiny", "x", "MIT", sha256=sha256_file(source), size=size, container="model_state_dict",
                            strip=("module.",), ignore=("loss.*",))
    import_file(pinned, source)
    assert record("tiny")["pinned"] is True


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_a_truncated_or_foreign_file_is_one_line(content: bytes | None, tmp_path: Path) -> None:
    source = training_checkpoint(tmp_path / "tiny.pth", tiny())
    data = source.read_bytes()
    source.write_bytes(data[: len(data) // 2] if content is None else content)
    with pytest.raises(CheckpointError, match=r"^file .*tiny.pth is not a readable checkpoint") as info:
        import_file(SPEC, source)
    assert "\n" not in str(info.value)


def test_a_pickle_with_code_is_refused(tmp_path: Path) -> None:
    """weights_only=True: a pickle that would run code is not read."""
    source = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {"w": torch.ones(1)}, "hook": print}, source)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        import_file(SPEC, source)


def test_extract_state_container_prefixes_ignores() -> None:
    raw = {"state_dict": {"_orig_mod.a": torch.ones(1), "_orig_mod.loss.w": torch.ones(1), "b": torch.zeros(2)}}
    spec = CheckpointSpec("x", "x", "MIT", container="state_dict", strip=("_orig_mod.",), ignore=("loss.*",))
    assert sorted(extract_state(spec, raw)) == ["a", "b"]
    with pytest.raises(CheckpointError, match="no 'model' in the file"):
        extract_state(CheckpointSpec("x", "x", "MIT", container="model"), raw)
    with pytest.raises(CheckpointError, match="two keys become 'a'"):
        extract_state(CheckpointSpec("x", "x", "MIT", strip=("m.",)), {"a": torch.ones(1), "m.a": torch.ones(1)})
    with pytest.raises(CheckpointError, match="'n' is a int, not a tensor"):
        extract_state(CheckpointSpec("x", "x", "MIT"), {"n": 3})


def test_load_strict_lists_missing_unexpected_and_shapes() -> None:
    module = tiny()
    state = dict(module.state_dict())
    state.pop("1.bias")
    state["extra.weight"] = torch.ones(1)
    state["0.bias"] = torch.ones(5)
    with pytest.raises(CheckpointError, match=r"missing \(1\): 1.bias; unexpected \(1\): extra.weight; "
                                              r"shape \(1\): 0.bias \(5,\) vs \(3,\)"):
        load_strict(module, state, "tiny")


def test_load_notices_a_changed_file_and_a_missing_import(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(CheckpointError, match="not imported: `migbench fetch tiny`, or download it by hand"):
        load_state("tiny")
    converted = import_file(SPEC, training_checkpoint(tmp_path / "tiny.pth", tiny()))
    data = bytearray(converted.read_bytes())
    data[-1] ^= 1
    converted.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="changed since it was imported"):
        load_state("tiny")
    (cache / "tiny.json").write_text(json.dumps({**record("tiny"), "bytes": 1}))
    converted.unlink()
    with pytest.raises(CheckpointError, match="recorded but missing"):
        load_state("tiny")
