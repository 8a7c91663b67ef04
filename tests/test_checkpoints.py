"""Public checkpoint handling on tiny random state dicts: import, conversion, records, strict loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from migbench.checkpoints import (
    CheckpointError,
    CheckpointSpec,
    extract_state,
    fetch,
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
    optional = CheckpointSpec("x", "x", "MIT", container="state_dict", container_optional=True)
    assert sorted(extract_state(optional, {"a": torch.ones(1)})) == ["a"]
    assert sorted(extract_state(optional, {"state_dict": {"b": torch.ones(1)}, "epoch": 1})) == ["b"]
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


LISTED = CheckpointSpec("tiny", "hf:someone/repo/weights/tiny.pth@0123abc", "MIT", container="model_state_dict",
                        strip=("module.",), ignore=("loss.*",))


def listed_spec(tmp_path: Path, model: nn.Module, monkeypatch: pytest.MonkeyPatch) -> CheckpointSpec:
    """LISTED with a key listing of ``model`` in an importable package under ``tmp_path``."""
    package = tmp_path / "listing_pkg"
    (package / "keys").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    keys = {k: list(v.shape) for k, v in model.state_dict().items()}
    (package / "keys" / "tiny.json").write_text(json.dumps({"provenance": "test", "parameters": 15, "keys": keys}))
    monkeypatch.syspath_prepend(str(tmp_path))
    return CheckpointSpec(**{**LISTED.__dict__, "listing": "listing_pkg:keys/tiny.json"})


def test_a_file_of_another_model_is_refused_by_its_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = listed_spec(tmp_path, tiny(), monkeypatch)
    import_file(spec, training_checkpoint(tmp_path / "right.pth", tiny()))
    other = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 1))
    with pytest.raises(CheckpointError, match=r"is not this checkpoint .another file or model\?.: unexpected \(2\): "
                                              r"2.bias, 2.weight; shape \(4\)") as info:
        import_file(spec, training_checkpoint(tmp_path / "other.pth", other))
    assert "\n" not in str(info.value)


def test_hub_sources_and_download_pages() -> None:
    assert LISTED.hub_location() == ("someone/repo", "weights/tiny.pth", "0123abc")
    assert LISTED.download_page() == "https://huggingface.co/someone/repo/blob/0123abc/weights/tiny.pth"
    assert SPEC.hub_location() is None and SPEC.download_page() == "https://example.org/tiny.pth"


def test_fetch_without_network_fails_at_once_naming_the_manual_route(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(CheckpointError, match=r"^tiny: cannot reach 127.0.0.1:9: .*; download "
                                              r"https://huggingface.co/someone/repo/blob/0123abc/weights/tiny.pth by "
                                              r"hand and run `migbench import tiny PATH`$"):
        fetch(LISTED)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set"):
        fetch(LISTED)
    with pytest.raises(CheckpointError, match=r"tiny is downloaded by hand: https://example.org/tiny.pth, then "
                                              r"`migbench import tiny PATH`"):
        fetch(SPEC)


def test_fetch_downloads_at_the_pinned_revision_and_imports(tmp_path: Path, cache: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub calls replaced by a local copy: fetch asks for the spec's repo, file and resolved
    commit, imports the download, records where it came from and leaves no download behind."""
    import huggingface_hub

    from migbench import checkpoints

    source = training_checkpoint(tmp_path / "tiny.pth", tiny())
    asked = {}

    def download(repo: str, file: str, revision: str, local_dir: Path) -> str:
        asked.update(repo=repo, file=file, revision=revision)
        target = Path(local_dir) / file
        target.parent.mkdir(parents=True)
        target.write_bytes(source.read_bytes())
        return str(target)

    monkeypatch.setattr(checkpoints, "check_network", lambda spec: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    etag = {"value": "0" * 64}  # a Git LFS file's etag is its sha256
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata",
                        lambda url: type("Meta", (), {"commit_hash": "f" * 40, "etag": f'"{etag["value"]}"'})())
    with pytest.raises(CheckpointError, match="the hub's 0000000000000000... .another checkpoint or a corrupted"):
        fetch(LISTED)
    assert sorted(p.name for p in cache.iterdir()) == []
    etag["value"] = sha256_file(source)
    fetch(LISTED)
    assert asked == {"repo": "someone/repo", "file": "weights/tiny.pth", "revision": "f" * 40}
    entry = record("tiny")
    assert entry["hub_commit"] == "f" * 40 and entry["source_sha256"] == entry["hub_sha256"] == sha256_file(source)
    assert sorted(p.name for p in cache.iterdir()) == ["tiny.json", "tiny.safetensors"]


def test_a_lightning_checkpoint_reads_with_inert_stand_ins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning keys ``callbacks`` by its ModelCheckpoint class and may keep hyper-parameters as a
    Namespace: those become stand-ins that run nothing; the weights come through unchanged."""
    import argparse
    import sys
    import types

    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        def __init__(self) -> None:
            self.best = 1.0

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = module.__name__, "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    for parent in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    model = tiny()
    source = tmp_path / "last.ckpt"
    torch.save({"state_dict": {**model.state_dict(), "loss.w": torch.ones(1)}, "epoch": 3,
                "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5)}},
                "hparams": argparse.Namespace(lr=1e-4), "pytorch-lightning_version": "1.0.8"}, source)
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", module.__name__):
        monkeypatch.delitem(sys.modules, name)  # reading needs no Lightning
    import_file(CheckpointSpec("tiny", "x", "MIT", container="state_dict", ignore=("loss.*",)), source)
    state, _ = load_state("tiny")
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value)


def test_hub_offline_flag_and_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    from migbench.checkpoints import check_network

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "no")  # not offline: the probe runs (and fails)
    with pytest.raises(CheckpointError, match="cannot reach 127.0.0.1:9"):
        check_network(LISTED)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")  # the hub goes through the proxy
    check_network(LISTED)
    monkeypatch.setenv("HF_HUB_OFFLINE", "ON")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set"):
        check_network(LISTED)


def test_every_known_checkpoint_names_a_listing_that_exists() -> None:
    from migbench import registry
    from migbench.checkpoints import expected_keys

    unlisted = {"ka_mig_graph_p"}  # a dense tensor pickle whose shape the conversion checks (no listing)
    for name, spec in registry.checkpoints().items():
        keys, parameters = expected_keys(spec)
        assert (keys and parameters > 0) or name in unlisted, name
        assert spec.licence and (spec.hub_location() is not None or spec.source.startswith("https://"))


def test_cli_fetch_and_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from migbench.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["fetch", "valeoai_vqgan"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HF_HUB_OFFLINE is set; download https://huggingface.co/llvictorll" in err
    assert main(["fetch", "valeoai_nonsense"]) == 2
    assert "unknown checkpoint 'valeoai_nonsense'" in capsys.readouterr().err
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"\x00" * 100)
    assert main(["import", "valeoai_vqgan", str(bad)]) == 2
    assert "is not a readable checkpoint" in capsys.readouterr().err


HUB_SPEC = CheckpointSpec("tiny", "hf:someone/tiny/model.safetensors@main", "MIT",
                          hub_config=(("model.generator.hidden_size", 3), ("model.vq_model.codebook_size", 4096)))


def hub_folder(folder: Path, model: nn.Module, hidden: int = 3) -> Path:
    """A ``PyTorchModelHubMixin.save_pretrained`` folder: config.json + model.safetensors."""
    folder.mkdir()
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model": {"generator": {"hidden_size": hidden},
                                                              "vq_model": {"codebook_size": 4096}}}))
    return folder


def test_a_hub_mixin_folder_imports_with_its_config_checked(tmp_path: Path, cache: Path) -> None:
    model = tiny()
    import_file(HUB_SPEC, hub_folder(tmp_path / "good", model))
    entry = record("tiny")
    assert entry["layout"] == "PyTorchModelHubMixin"
    assert entry["config_sha256"] == sha256_file(tmp_path / "good" / "config.json")
    assert entry["source_sha256"] == sha256_file(tmp_path / "good" / "model.safetensors")
    state, _ = load_state("tiny")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError, match=r"says model.generator.hidden_size = 4, this checkpoint's module has 3 "):
        import_file(HUB_SPEC, hub_folder(tmp_path / "other", model, hidden=4))
    with pytest.raises(CheckpointError, match=r"^tiny: folder .* holds no model.safetensors"):
        import_file(HUB_SPEC, (tmp_path / "empty").mkdir() or tmp_path / "empty")
    (tmp_path / "good" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json is not readable JSON"):
        import_file(HUB_SPEC, tmp_path / "good")
