"""The committed weights folder and its manifest.

Every trained component lives as ``<name>.safetensors`` in one folder beside ``manifest.json``,
whose entry records the file, its sha256, the command that made it, the wall time, the key
metrics, the model config and the git revision. Loading verifies the sha256 first.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import subprocess
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file

from migbench.paths import repo_root, weights_dir

MANIFEST = "manifest.json"


class WeightsError(RuntimeError):
    """A weights file is missing, unlisted, or does not match its manifest hash."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_revision() -> str:
    """The checkout's commit (with ``-dirty`` when it has uncommitted changes), or "unknown"."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=repo_root(), capture_output=True, text=True, timeout=10).stdout
        return rev + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def read_manifest(folder: Path | None = None) -> dict[str, dict[str, Any]]:
    path = (folder or weights_dir()) / MANIFEST
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise WeightsError(f"file {path} is not a valid weights manifest ({err}); restore it from git") from None
    if not isinstance(manifest, dict):
        raise WeightsError(f"file {path} is not a valid weights manifest (a JSON object of entries)")
    return manifest


def _write_manifest(manifest: dict[str, dict[str, Any]], folder: Path) -> None:
    path = folder / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def save_weights(name: str, state: dict[str, torch.Tensor], *, half: bool = True,
                 folder: Path | None = None) -> Path:
    """Write ``<name>.safetensors`` (floating tensors as fp16 when ``half``); returns its path.

    The manifest entry is written separately by :func:`record`, after the metrics have been
    measured on the weights exactly as saved.
    """
    folder = folder or weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).contiguous()
               for k, v in state.items()}
    path = folder / f"{name}.safetensors"
    save_file(tensors, str(path))
    return path


def record(name: str, *, command: str, wall_seconds: float, metrics: dict[str, float],
           config: dict[str, Any], folder: Path | None = None) -> dict[str, Any]:
    """Add or replace the manifest entry of ``name`` (its file must already be written)."""
    folder = folder or weights_dir()
    path = folder / f"{name}.safetensors"
    entry = {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
             "command": command, "wall_seconds": round(wall_seconds, 1), "metrics": metrics,
             "config": config, "git_revision": git_revision(),
             "torch": torch.__version__,
             "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    manifest = read_manifest(folder)
    manifest[name] = entry
    _write_manifest(manifest, folder)
    return entry


def manifest_entry(name: str, folder: Path | None = None) -> dict[str, Any]:
    folder = folder or weights_dir()
    manifest = read_manifest(folder)
    if name not in manifest:
        known = ", ".join(sorted(manifest)) or "none"
        raise WeightsError(f"no weights named {name!r} in {folder / MANIFEST} (known: {known}); "
                           f"train them with `migbench train ...` or `migbench fit ...`.")
    return manifest[name]


def load_weights(name: str, folder: Path | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The fp32 state dict of ``name`` and its manifest entry, after checking the sha256."""
    folder = folder or weights_dir()
    entry = manifest_entry(name, folder)
    path = folder / entry["file"]
    if not path.exists():
        raise WeightsError(f"{path} is listed in the manifest but missing")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise WeightsError(f"{path} has sha256 {actual}, but the manifest expects {entry['sha256']}: "
                           "the file was changed or corrupted; retrain it or restore it from git.")
    return load_file_unchecked(path), entry


M = TypeVar("M", bound=torch.nn.Module)
_MODULES: OrderedDict[tuple[str, str, Hashable], torch.nn.Module] = OrderedDict()
CACHED_MODULES = 8  # loaded modules kept (critics, adapters, KA-MIG modules, the classifier)


def load_into(name: str, build: Callable[[dict[str, Any]], M], folder: Path | None = None) -> M:
    """The committed weights ``name`` (sha256-checked) loaded strictly into ``build(entry)``, the
    module that ``name``'s manifest entry describes; in eval mode with gradients off."""
    state, entry = load_weights(name, folder)
    module = build(entry)
    module.load_state_dict(state)
    return module.eval().requires_grad_(False)


def load_module(name: str, build: Callable[[dict[str, Any]], M], key: Hashable = None) -> M:
    """:func:`load_into`, cached per (name, sha256, ``key``): ``key`` names whatever else ``build``
    depends on (the backbone a KA-MIG module copies its head from). The one cached loader of
    every trained part; the :data:`CACHED_MODULES` most recent stay loaded."""
    cache_key = (name, manifest_entry(name)["sha256"], key)
    if cache_key in _MODULES:
        _MODULES.move_to_end(cache_key)
    else:
        _MODULES[cache_key] = load_into(name, build)
        while len(_MODULES) > CACHED_MODULES:
            _MODULES.popitem(last=False)
    return _MODULES[cache_key]  # type: ignore[return-value]


def publish(name: str, model: torch.nn.Module, fresh: Callable[[], torch.nn.Module],
            measure: Callable[[torch.nn.Module], dict[str, float]], *, command: str, started: float,
            config: dict[str, Any], half: bool = True, folder: Path | None = None) -> torch.nn.Module:
    """Save a trained model, reload it into ``fresh()``, measure it, record the manifest entry.

    The metrics are those of the weights exactly as saved (fp16 round trip included). ``started``
    is the ``time.monotonic()`` at which training began. Returns the reloaded model in eval mode.
    """
    folder = folder or weights_dir()
    save_weights(name, model.state_dict(), half=half, folder=folder)
    saved = fresh()
    saved.load_state_dict(load_file_unchecked(folder / f"{name}.safetensors"))
    saved.eval()
    record(name, command=command, wall_seconds=time.monotonic() - started, metrics=measure(saved),
           config=config, folder=folder)
    return saved


def load_file_unchecked(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file as an fp32 state dict, with no manifest check (for freshly saved files)."""
    return {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
