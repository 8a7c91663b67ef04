"""`migbench sweep SUITE`: run every pending point of a suite, one result row per point.

A point is skipped when its run hash (resolved recipe, backbone and method weight hashes, n, seed,
batch size, reference, evaluator and extractor weights, sampler code version, method versions past
1) already has a row. A suite whose pending points name untrained weights fails before sampling.
Sampling is sharded over the processes of an ``accelerate launch`` (CPU or GPU): each process
samples its batches (:mod:`migbench.generate`), the main process gathers, evaluates, appends the
row and draws a grid. ``--processes P`` relaunches the sweep under ``accelerate launch``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from migbench.benchmarks.metrics.evaluate import Extractor, evaluate
from migbench.benchmarks.results import append_row, read_rows, repair, results_dir, write_csv
from migbench.benchmarks.suite import Point, Suite, SuiteError, load_suite
from tqdm.auto import tqdm

import migbench
from migbench import registry
from migbench.config import stable_hash
from migbench.data import CLASS_NAMES
from migbench.generate import Generation, generate, merge
from migbench.images import save_grid, save_samples
from migbench.precision import explain as explain_precision
from migbench.precision import resolve as resolve_precision
from migbench.recipe import Recipe
from migbench.weights import WeightsError, git_revision, read_manifest


def method_weight_hashes(recipe: Recipe) -> dict[str, str]:
    """sha256 of every manifest entry a method config names (``weights``, ``graphs``)."""
    found = {}
    manifest = read_manifest()
    for config in recipe.configs:
        for key in ("weights", "graphs"):
            name = getattr(config, key, None)
            if isinstance(name, str):
                found[name] = manifest.get(name, {}).get("sha256", "missing")
    return found


def missing_weights(points: list[tuple[Point, str]]) -> dict[str, list[str]]:
    """Weights names the points' method configs name but the manifest lacks -> their run labels."""
    missing: dict[str, list[str]] = {}
    for point, _ in points:
        for name, sha in method_weight_hashes(point.recipe).items():
            if sha == "missing" and point.label not in missing.setdefault(name, []):
                missing[name].append(point.label)
    return missing


def method_versions(recipe: Recipe) -> dict[str, int]:
    """The ``version`` of every method in ``recipe`` that has been bumped past 1 (a method bumps
    it when its samples change for the same config, so its old rows rerun)."""
    versions = {name: getattr(registry.method(name), "version", 1) for name in recipe.methods}
    return {name: v for name, v in versions.items() if v > 1}


def run_hash(point: Point, suite: Suite, weight_hashes: dict[str, str], evaluator: dict[str, str],
             precision: str) -> str:
    """Identity of a point's result: equal hashes give equal rows. ``weight_hashes`` holds the
    stack's and every method's weights (retraining a critic or adapter reruns its points);
    ``precision`` is the resolved one (bf16, fp16, fp32): samples differ between precisions."""
    identity = {"recipe": point.recipe.describe(), "backbone": point.backbone,
                "weights": weight_hashes, "n": suite.n, "seed": point.seed,
                "batch_size": suite.batch_size, "reference": suite.reference,
                "evaluator": evaluator, "sampler_version": migbench.SAMPLER_VERSION}
    versions = method_versions(point.recipe)
    if versions:  # absent while every method is at version 1, so those rows keep their hashes
        identity["method_versions"] = versions
    if precision != "bf16":  # absent for bf16, the only precision before it was a choice: old rows keep their hashes
        identity["precision"] = precision
    if point.head_dtype != "auto":
        identity["head_dtype"] = point.head_dtype
    return stable_hash(identity)


def possible_precisions(declared: str) -> tuple[str, ...]:
    """The precisions a point declared as ``declared`` may have been sampled in (auto: bf16 or fp32)."""
    return ("bf16", "fp32") if declared == "auto" else (declared,)


def row_precision(row: dict[str, Any]) -> str:
    """The precision a row was sampled in (rows from before it was recorded were all bf16)."""
    return str(row.get("precision", "bf16"))


def provenance_key(provenance: dict[str, Any]) -> str:
    """Hash of what makes two rows comparable (evaluator, extractor, reference, N)."""
    keys = ("evaluator", "evaluator_version", "extractor", "feature_layer", "extractor_weights",
            "reference_sha256", "n")
    return stable_hash({k: provenance[k] for k in keys}, length=10)


def _distributed() -> tuple[Any, int, int]:
    from accelerate import PartialState

    # the other processes wait while the main one evaluates: allow hours, not the 30-min default
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(hours=6))
    return state, state.process_index, state.num_processes


def _gather(state: Any, part: Generation) -> list[Generation]:
    if state.num_processes == 1:
        return [part]
    from accelerate.utils import gather_object

    return gather_object([part])


def free_port() -> int:
    """An unused TCP port on the loopback interface (for the processes' rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def relaunch(args: list[str], processes: int) -> int:
    """Run ``migbench sweep`` under ``accelerate launch`` with ``processes`` processes."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    if accelerate is None:
        raise RuntimeError("`accelerate` is not on PATH; install it (pip install accelerate)")
    # accelerate's --cpu launcher starts a single process; its multi-process launcher
    # (torch.distributed.run) works on CPU too: PartialState(cpu=True) then picks gloo.
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    env = {**os.environ, "MIGBENCH_LAUNCHED": "1"}
    return subprocess.call([*launch, "-m", "migbench.cli", "sweep", *args], env=env)


def sweep(suite_name: str | Suite, *, results_root: Path | None = None, floors: bool = True,
          keep_samples: bool = False, progress: bool = True, limit: int | None = None) -> Path:
    """Run the pending points of ``suite_name`` (a name, a path, or a parsed Suite); returns the
    results folder."""
    suite = suite_name if isinstance(suite_name, Suite) else load_suite(suite_name)
    state, rank, world = _distributed()
    device = state.device
    folder = results_dir(suite.name, results_root)
    if state.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        dropped = repair(folder)
        if dropped:
            print(f"dropped {dropped} incomplete line(s) from {folder}/results.jsonl")
    state.wait_for_everyone()
    extractor = Extractor.fmnist()
    stacks: dict[str, Any] = {}
    done = {row["run_hash"] for row in read_rows(folder)}
    todo = []
    for point, h in suite_hashes(suite, stacks, extractor, lambda p: resolve_precision(p.precision, device)):
        if h not in done:
            todo.append((point, h))
            done.add(h)
    todo = todo[:limit] if limit is not None else todo
    missing = missing_weights(todo)
    if missing:
        needs = "; ".join(f"{name} (runs: {', '.join(labels)})" for name, labels in missing.items())
        raise WeightsError(f"suite {suite.name} needs weights the manifest does not list: {needs}. "
                           "Train them first (`migbench fit METHOD ...`, see README, The embedded stack).")
    if state.is_main_process:
        declared = sorted({point.precision for point, _ in todo})
        print(f"suite {suite.name}: {len(suite.points)} points, {len(suite.points) - len(todo)} done, "
              f"{len(todo)} to run on {world} process(es) of {device}; "
              + ", ".join(explain_precision(p, device) for p in declared))
        if floors and todo:
            try:
                _write_floors(folder, suite)
            except ValueError as err:
                print(f"quality floors skipped: {err}")
    bar = tqdm(todo, desc=f"sweep {suite.name}", unit="point", disable=not (progress and state.is_main_process))
    for point, h in bar:
        bar.set_postfix_str(f"{point.label} {dict(point.swept)} seed={point.seed}")
        stack = stacks[point.backbone]
        part = generate(stack, point.recipe, suite.n, point.seed, batch_size=suite.batch_size,
                        device=device, process_index=rank, num_processes=world, precision=point.precision,
                        head_dtype=point.head_dtype, progress=progress and state.is_main_process)
        parts = _gather(state, part)
        if state.is_main_process:
            result = merge(parts)
            _record(folder, suite, point, h, stack, result, extractor, str(device), world, keep_samples)
        state.wait_for_everyone()
    if state.is_main_process:
        write_csv(folder)
    return folder


def suite_hashes(suite: Suite, stacks: dict[str, Any], extractor: Extractor,
                 precision_of: Callable[[Point], str]) -> list[tuple[Point, str]]:
    """Every point of ``suite`` with its run hash at the precision ``precision_of(point)``
    (``stacks`` caches the loaded stacks)."""
    out = []
    for point in suite.points:
        if point.backbone not in stacks:
            stacks[point.backbone] = registry.backbone(point.backbone)()
        hashes = {**stacks[point.backbone].weight_hashes, **method_weight_hashes(point.recipe)}
        out.append((point, run_hash(point, suite, hashes, extractor.describe(), precision_of(point))))
    return out


def current_hashes(suite_name: str) -> list[str] | None:
    """Run hashes of the suite as it is defined now, in suite order, at every precision a point
    may have been sampled in on some machine (``auto`` is bf16 or fp32); None if no such suite."""
    try:
        suite = load_suite(suite_name)
    except SuiteError:
        return None
    stacks: dict[str, Any] = {}
    hashes: list[str] = []
    for used in ("bf16", "fp32", "fp16"):
        hashes += [h for point, h in suite_hashes(suite, stacks, Extractor.fmnist(), lambda _, used=used: used)
                   if used in possible_precisions(point.precision)]
    return list(dict.fromkeys(hashes))


def _write_floors(folder: Path, suite: Suite) -> None:
    from migbench.benchmarks.metrics.floors import floors as compute_floors

    path = folder / "floors.json"
    result = compute_floors(suite.n, suite.reference)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _record(folder: Path, suite: Suite, point: Point, h: str, stack: Any, result: Generation,
            extractor: Extractor, device: str, world: int, keep_samples: bool) -> None:
    evaluation = evaluate(result.images, result.labels, suite.reference, extractor)
    save_grid(folder / "grids" / f"{h}.png", result.images, result.labels, CLASS_NAMES)
    if keep_samples:
        save_samples(folder / "samples" / f"{h}.npz", result.images, result.labels)
    provenance = {**evaluation["provenance"], "weights": {**stack.weight_hashes, **method_weight_hashes(point.recipe)},
                  "seed": point.seed,
                  "git_revision": git_revision(), "device": device, "processes": world,
                  "python": platform.python_version(), "migbench": migbench.__version__,
                  "sampler_version": migbench.SAMPLER_VERSION, "method_versions": method_versions(point.recipe),
                  "precision": result.precision, "head_dtype": result.head_dtype}
    row = {"suite": suite.name, "label": point.label, "backbone": point.backbone,
           "methods": list(point.recipe.methods), "swept": dict(point.swept),
           "overrides": dict(point.overrides), "recipe": point.recipe.describe(), "n": suite.n,
           "seed": point.seed, "batch_size": suite.batch_size, "reference": suite.reference,
           "precision": result.precision, "head_dtype": result.head_dtype, "run_hash": h, "samples_sha256": sample_fingerprint(result), "metrics": evaluation["metrics"],
           "cost": {"nfe_per_image": result.nfe_per_image,
                    "images_per_second": round(result.images_per_second, 2),
                    "sampling_seconds": round(result.sampling_seconds, 2),
                    "extra_parameters": result.extra_parameters},
           "provenance": provenance, "provenance_key": provenance_key(provenance),
           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    append_row(folder, row)


def sample_fingerprint(result: Generation) -> str:
    """sha256 of the samples and labels (equal for any number of processes)."""
    digest = hashlib.sha256(np.ascontiguousarray(result.images).tobytes())
    digest.update(np.ascontiguousarray(result.labels).tobytes())
    return digest.hexdigest()
