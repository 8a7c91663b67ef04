"""Public checkpoints: what a known file is, importing it once into the user cache, strict loading.

A family lists its known files as :class:`CheckpointSpec` entries (source, expected size and
sha256 where known, container key, prefixes to strip, keys to ignore, licence). A file enters
the cache once (:func:`import_file`): read with ``torch.load(weights_only=True)`` when it is a
pickle (or as safetensors; a plain ``pickle.dump`` of tensors, such as KA-MIG's graph files,
through :func:`read_tensor_pickle`, which rebuilds tensors and nothing else), the state dict taken out of its container, prefixes stripped and
ignored keys dropped, then written as ``<cache>/checkpoints/<name>.safetensors`` beside a
``<name>.json`` record of the source's and the converted file's sha256 and size. Later loads
(:func:`load_state`) read the converted file and check it against that record by size and
modification time, hashing it again only when those changed (a 1 GB file is not re-hashed on
every load). :func:`load_strict` loads a state dict into a module and fails with the lists of
missing and unexpected keys.

A file is recognised by its size and sha256 where those are pinned (or stated by the hub), and
always by its content: the family's committed key listing (``listing``: every key with its
shape) must match the converted state dict, so another checkpoint or a file of the wrong model
is refused at import with the keys that differ, not at sampling time. A cut file fails to read.

Only :func:`fetch` downloads (``migbench fetch NAME``, through ``huggingface_hub`` at the spec's
revision); ``migbench import NAME PATH`` takes a file downloaded by hand. A sweep never fetches.
"""

from __future__ import annotations

import fnmatch
import importlib.resources
import io
import json
import os
import pickle
import re
import shutil
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from migbench.outputs import write_text_atomic
from migbench.paths import cache_dir
from migbench.weights import sha256_file


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, foreign, truncated or does not fit its module."""


@dataclass(frozen=True)
class CheckpointSpec:
    """One known public file.

    ``source`` is where it comes from (``hf:REPO/FILE@REVISION`` or a URL to download by hand);
    ``sha256`` and ``size`` are pinned where known ("" and 0 where not: recorded at first import);
    ``container`` is the key holding the state dict in a training checkpoint (``"state_dict"``,
    ``"model_state_dict"``, ...; "" for a bare state dict); ``strip`` lists key prefixes to remove
    (``module.``, ``_orig_mod.``); ``ignore`` lists glob patterns of keys to drop (``loss.*``);
    ``listing`` names the committed key listing the state dict must match
    (``"package:relative/path.json"``, a JSON object with ``keys`` {name: shape} and ``parameters``);
    ``manual`` is the page to download the file from by hand where ``source`` is no ``hf:`` path;
    ``container_optional``: the file may also be the bare state dict (taming's ``init_from_ckpt``
    takes ``state_dict`` when it is there); ``fields`` names the items of a file that is a plain pickle of a tensor or a list of tensors
    (KA-MIG's graphs: ``("edge_index", "edge_weight")``), read by :func:`read_tensor_pickle`
    into the state dict {field: tensor}; ``hub_config`` lists (dotted key, value) pairs that the
    ``config.json`` of a ``PyTorchModelHubMixin`` folder (``config.json`` + ``model.safetensors``)
    must hold, checked when such a folder is imported (:func:`hub_mixin_weights`)."""

    name: str
    source: str
    licence: str
    sha256: str = ""
    size: int = 0
    container: str = ""
    strip: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    listing: str = ""
    manual: str = ""
    container_optional: bool = False
    fields: tuple[str, ...] = ()
    hub_config: tuple[tuple[str, object], ...] = ()

    def hub_location(self) -> tuple[str, str, str] | None:
        """(repo id, file, revision) of an ``hf:OWNER/REPO/PATH@REVISION`` source, else None."""
        if not self.source.startswith("hf:"):
            return None
        path, _, revision = self.source[3:].partition("@")
        owner, repo, file = path.split("/", 2)
        return f"{owner}/{repo}", file, revision or "main"

    def download_page(self) -> str:
        """Where a person downloads the file by hand."""
        if self.manual:
            return self.manual
        location = self.hub_location()
        if location is None:
            return self.source
        repo, file, revision = location
        return f"https://huggingface.co/{repo}/blob/{revision}/{file}"


def expected_keys(spec: CheckpointSpec) -> tuple[dict[str, tuple[int, ...]], int]:
    """The key listing of ``spec``: {key: shape} and the parameter count (empty without one)."""
    if not spec.listing:
        return {}, 0
    package, _, resource = spec.listing.partition(":")
    data = json.loads(importlib.resources.files(package).joinpath(resource).read_text())
    return {k: tuple(v) for k, v in data["keys"].items()}, int(data["parameters"])


def key_differences(expected: Mapping[str, tuple[int, ...]], state: Mapping[str, torch.Tensor]) -> str:
    """The keys missing from ``state``, the unexpected ones and the shape mismatches against
    ``expected`` {key: shape}, each listed (at most 10), as one line ("" when they agree)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k])}" for k in set(expected) & set(state)
                    if tuple(state[k].shape) != tuple(expected[k]))
    return "; ".join(f"{label} ({len(found)}): {', '.join(found[:10])}{' ...' if len(found) > 10 else ''}"
                     for label, found in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
                     if found)


def check_listing(spec: CheckpointSpec, state: Mapping[str, torch.Tensor], source: Path) -> None:
    """Refuse ``state`` unless it holds exactly the listed keys with the listed shapes (one line
    naming what differs: another checkpoint, or a file of another model)."""
    keys, _ = expected_keys(spec)
    differences = key_differences(keys, state) if keys else ""
    if differences:
        raise CheckpointError(f"{spec.name}: {source} is not this checkpoint (another file or model?): {differences}")


def checkpoints_dir(create: bool = True) -> Path:
    """``<cache>/checkpoints`` (``MIGBENCH_CHECKPOINTS`` overrides it), made unless ``create`` is
    False (what only reads it, like ``migbench info``)."""
    override = os.environ.get("MIGBENCH_CHECKPOINTS")
    folder = Path(override) if override else cache_dir() / "checkpoints"
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


# Modules whose classes training checkpoints hold as metadata beside the weights (Lightning's
# callbacks keyed by class, hyper-parameters as Namespace or OmegaConf objects, numpy scalars).
METADATA_MODULES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.", "argparse.", "numpy.")


class _StandIn:
    """What a metadata class of :data:`METADATA_MODULES` becomes when a checkpoint is read: it
    takes any arguments and state and runs nothing, so no code from the file runs."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; a file that names metadata classes of training
    frameworks (a Lightning checkpoint's ``callbacks`` are keyed by ``ModelCheckpoint``) is read
    again with inert stand-ins for those classes, and only those: any other class is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if not names or not all(name.startswith(METADATA_MODULES) for name in names):
            raise
        stand_ins = [(type(name.rsplit(".", 1)[-1], (_StandIn,), {}), name) for name in names]
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)


class _TensorUnpickler(pickle.Unpickler):
    """Unpickles tensors, lists and ``OrderedDict`` only: the three globals a ``pickle.dump`` of
    CPU tensors names (``torch._utils._rebuild_tensor_v2``, ``torch.storage._load_from_bytes``,
    ``collections.OrderedDict``); each storage's bytes are read by ``torch.load(weights_only=True)``.
    Any other global is refused, so no code from the file runs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return torch._utils._rebuild_tensor_v2
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return lambda data: torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if (module, name) == ("collections", "OrderedDict"):
            return __import__("collections").OrderedDict
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a tensor pickle")


def read_tensor_pickle(path: Path, fields: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """{field: tensor} of a plain pickle holding one tensor (one field) or a list of tensors (one
    field per item), read by a restricted unpickler (:class:`_TensorUnpickler`)."""
    with open(path, "rb") as f:
        obj = _TensorUnpickler(f).load()
    items = [obj] if isinstance(obj, torch.Tensor) else obj
    if not isinstance(items, list | tuple) or len(items) != len(fields) \
            or not all(isinstance(t, torch.Tensor) for t in items):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not {len(fields)} tensor(s) "
                              f"({', '.join(fields)})")
    return dict(zip(fields, items, strict=True))


def _read(path: Path, fields: tuple[str, ...] = ()) -> Mapping[str, Any]:
    """The object in ``path``: a ``.safetensors`` file, a pickle read with ``weights_only=True``
    (tensors and plain containers only; training frameworks' metadata classes as inert
    stand-ins: no code from the file runs), or with ``fields`` a plain tensor pickle
    (:func:`read_tensor_pickle`)."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        if fields:
            return read_tensor_pickle(path, fields)
        return _torch_load(path)
    except CheckpointError:
        raise
    except Exception as err:  # torch and safetensors raise many kinds for a foreign or cut file
        raise CheckpointError(f"file {path} is not a readable checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None


def extract_state(spec: CheckpointSpec, raw: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict of ``raw``: out of ``spec.container``, prefixes stripped, ignored keys
    dropped; every value must be a tensor."""
    if spec.container and not (spec.container_optional and spec.container not in raw):
        if spec.container not in raw:
            raise CheckpointError(f"{spec.name}: no {spec.container!r} in the file (keys: "
                                  f"{', '.join(sorted(map(str, raw))[:8])})")
        raw = raw[spec.container]
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        for prefix in spec.strip:
            key = key.removeprefix(prefix)
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in spec.ignore):
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{spec.name}: {key!r} is a {type(value).__name__}, not a tensor")
        if key in state:
            raise CheckpointError(f"{spec.name}: two keys become {key!r} once {spec.strip} are stripped")
        state[key] = value.contiguous()
    return state


def hub_mixin_weights(spec: CheckpointSpec, folder: Path) -> tuple[Path, dict[str, str]]:
    """The weights file of a ``PyTorchModelHubMixin`` folder (``model.safetensors``) and what to
    record of it; its ``config.json``, where present, must hold every value of ``spec.hub_config``
    (the folder of another model size is refused before its weights are read)."""
    weights, config = folder / "model.safetensors", folder / "config.json"
    if not weights.is_file():
        raise CheckpointError(f"{spec.name}: folder {folder} holds no model.safetensors (a PyTorchModelHubMixin "
                              "folder holds config.json and model.safetensors)")
    info = {"layout": "PyTorchModelHubMixin"}
    if config.is_file():
        try:
            values = json.loads(config.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{spec.name}: {config} is not readable JSON ({type(err).__name__})") from None
        for dotted, expected in spec.hub_config:
            value: object = values
            for part in dotted.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value != expected:
                raise CheckpointError(f"{spec.name}: {config} says {dotted} = {value!r}, this checkpoint's module "
                                      f"has {expected!r} (the folder of another model?)")
        info["config_sha256"] = sha256_file(config)
    return weights, info


def import_file(spec: CheckpointSpec, source: Path, origin: Mapping[str, str] | None = None,
                expected_sha256: str = "") -> Path:
    """Check ``source`` against ``spec`` (size, sha256 where pinned or ``expected_sha256`` where
    the hub states it, the key listing), convert it once to safetensors in
    :func:`checkpoints_dir` and record both hashes (and ``origin``: where it came from, e.g. the
    hub commit); returns the converted path. ``source`` may be a ``PyTorchModelHubMixin`` folder
    (:func:`hub_mixin_weights`). Nothing is left behind when it fails."""
    if source.is_dir():
        source, info = hub_mixin_weights(spec, source)
        origin = {**(origin or {}), **info}
    if not source.is_file():
        raise CheckpointError(f"{spec.name}: no file {source}")
    before = source.stat()
    if spec.size and before.st_size != spec.size:
        raise CheckpointError(f"{spec.name}: {source} has {before.st_size:,} bytes, the known file {spec.size:,} "
                              "(a truncated download or another file)")
    digest = sha256_file(source)
    for known, whose in ((spec.sha256, "the known file"), (expected_sha256, "the hub's")):
        if known and digest != known:
            raise CheckpointError(f"{spec.name}: {source} has sha256 {digest[:16]}..., {whose} {known[:16]}... "
                                  "(another checkpoint or a corrupted download)")
    state = extract_state(spec, _read(source, spec.fields))
    after = source.stat()
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise CheckpointError(f"{spec.name}: {source} changed while it was read (still being written?); try again")
    check_listing(spec, state, source)
    folder = checkpoints_dir()
    target, record_path = folder / f"{spec.name}.safetensors", folder / f"{spec.name}.json"
    staged = target.with_name(target.name + ".tmp")
    try:
        save_file(state, str(staged), metadata={"source_sha256": digest})
        os.replace(staged, target)
    finally:
        staged.unlink(missing_ok=True)
    stat = target.stat()
    entry = {"name": spec.name, "source": spec.source, "licence": spec.licence, "source_sha256": digest,
             "source_bytes": before.st_size, "sha256": sha256_file(target), "bytes": stat.st_size,
             "mtime_ns": stat.st_mtime_ns, "pinned": bool(spec.sha256), **(origin or {})}
    write_text_atomic(record_path, json.dumps(entry, indent=2, sort_keys=True) + "\n")
    return target


def hub_endpoint() -> str:
    """The Hugging Face endpoint ``huggingface_hub`` uses (``HF_ENDPOINT`` overrides it)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def check_network(spec: CheckpointSpec, timeout: float = 5.0) -> None:
    """Fail at once, naming the manual route, when the hub cannot be reached (``huggingface_hub``
    itself retries for half a minute before it gives up): ``HF_HUB_OFFLINE`` set (as
    ``huggingface_hub`` reads it), or no connection to the endpoint. Behind an HTTPS proxy the
    probe is left to ``huggingface_hub``, which goes through the proxy."""
    host = hub_endpoint().split("://", 1)[-1].split("/", 1)[0]
    name, _, port = host.partition(":")
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        reason = "HF_HUB_OFFLINE is set"
    elif os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return
    else:
        try:
            socket.create_connection((name, int(port or 443)), timeout=timeout).close()
            return
        except OSError as err:
            reason = f"cannot reach {host}: {err.strerror or err}"
    raise CheckpointError(f"{spec.name}: {reason}; download {spec.download_page()} by hand and run "
                          f"`migbench import {spec.name} PATH`")


def _download(spec: CheckpointSpec, staging: Path) -> tuple[Path, dict[str, str], str]:
    """Download ``spec``'s hub file into ``staging`` at the commit its revision resolves to: the
    file, where it came from, and the sha256 the hub states for it (Git LFS files; "" otherwise)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    repo, file, revision = spec.hub_location() or ("", "", "")
    try:
        metadata = get_hf_file_metadata(hf_hub_url(repo, file, revision=revision))
        commit = metadata.commit_hash or revision
        path = Path(hf_hub_download(repo, file, revision=commit, local_dir=staging))
    except Exception as err:  # the hub raises its own kinds (missing repo, revision, file; HTTP errors)
        raise CheckpointError(f"{spec.name}: download from {repo} failed ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); download "
                              f"{spec.download_page()} by hand and run `migbench import {spec.name} PATH`") from None
    etag = (metadata.etag or "").strip('"')
    hub_sha256 = etag if re.fullmatch(r"[0-9a-f]{64}", etag) else ""
    return path, {"hub_repo": repo, "hub_file": file, "hub_commit": commit}, hub_sha256


def fetch(spec: CheckpointSpec) -> Path:
    """Download ``spec``'s file from the Hugging Face hub at the commit its revision resolves
    to, check it against the sha256 the hub states for it, import it (:func:`import_file`) and
    delete the download; returns the converted path. Files that are not on the hub (Google
    Drive) are refused with their download page."""
    if spec.hub_location() is None:
        raise CheckpointError(f"{spec.name} is downloaded by hand: {spec.download_page()}, then "
                              f"`migbench import {spec.name} PATH`")
    check_network(spec)
    staging = checkpoints_dir() / f".{spec.name}.download"
    try:
        path, origin, hub_sha256 = _download(spec, staging)
        return import_file(spec, path, {**origin, "hub_sha256": hub_sha256}, expected_sha256=hub_sha256)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_imported(name: str) -> bool:
    """Whether ``name`` has an import record and its converted file."""
    folder = checkpoints_dir(create=False)
    return (folder / f"{name}.json").is_file() and (folder / f"{name}.safetensors").is_file()


def record(name: str) -> dict[str, Any]:
    """The import record of ``name`` (its sha256s enter run hashes and result rows)."""
    path = checkpoints_dir(create=False) / f"{name}.json"
    if not path.exists():
        raise CheckpointError(f"checkpoint {name} is not imported: `migbench fetch {name}`, or download it "
                              f"by hand and `migbench import {name} PATH`")
    return json.loads(path.read_text())


def load_state(name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The converted state dict of ``name`` and its record. The file is re-hashed only when its
    size or modification time differs from the record's."""
    entry = record(name)
    path = checkpoints_dir() / f"{name}.safetensors"
    if not path.exists():
        raise CheckpointError(f"{path} is recorded but missing: import {name} again")
    stat = path.stat()
    if (stat.st_size, stat.st_mtime_ns) != (entry["bytes"], entry["mtime_ns"]) and sha256_file(path) != entry["sha256"]:
        raise CheckpointError(f"{path} changed since it was imported (sha256 differs): import {name} again")
    return load_file(str(path)), entry


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], name: str) -> None:
    """``module.load_state_dict(state)``, failing with the missing and unexpected keys and the
    shape mismatches, each listed (at most 10 of each)."""
    differences = key_differences({k: tuple(v.shape) for k, v in module.state_dict().items()}, state)
    if differences:
        raise CheckpointError(f"{name} does not fit {type(module).__name__}: {differences}")
    module.load_state_dict(state)
