"""`migbench sweep SUITE`: run every pending point of a suite, one result row per point.

A point is skipped when its run hash (resolved recipe, backbone and method weight hashes, n, seed,
batch size, reference, evaluator and extractor weights, sampler code version, method versions past
1) already has a row. A suite whose pending points name untrained weights, or a recipe that does
not build on its backbone (:func:`validate`: a step count above its number of tokens), fails
before sampling, and before its results folder is made. One sweep at a time writes a results
folder (:mod:`~migbench.benchmarks.lock`; a second one refuses, naming the first), and a row is
never appended twice for one run hash.
``--processes P`` relaunches the sweep under ``accelerate launch`` (one GPU per process, or CPU
processes where no GPU is visible); the processes die with their launcher (:func:`relaunch`).

Per point, every process of the launch (CPU or GPU) runs its share of the batches
(:mod:`migbench.generate`) and evaluates each batch as it comes (:class:`ShardEvaluator`):
decode, quantise, then the extractor's features on the process's own device, one forward pass
per sampling batch in fp32 (so a batch's features do not depend on which process made it), a
sha256 of the batch's uint8 images and labels, the few samples a grid shows, and with
``--keep-samples`` the batch appended to the process's raw sample shard. No process keeps its
images. The main process gathers each one's :class:`Shard` (features, batch hashes, labels,
indices, grid samples; at 50k ImageNet samples about 0.6 GB of Inception features in all, no
images), orders the features by sample index (:func:`merge_shards`), computes the metrics from
them (:func:`~migbench.benchmarks.metrics.evaluate.evaluate_features`, the numbers
:func:`~migbench.benchmarks.metrics.evaluate.evaluate` gives for the same images), streams the
shards into one ADM ``samples.npz`` if asked, appends the row and draws the grid. A row's
``samples_sha256`` is :data:`FINGERPRINT`: the sha256 of the batch hashes in batch order, the
same for any number of processes.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from migbench.benchmarks.lock import INHERITED, LAUNCHER_PID, LockError, ResultsLock
from migbench.benchmarks.metrics.evaluate import (
    Extractor,
    check_reference,
    evaluate_features,
    extract_batch,
)
from migbench.benchmarks.results import (
    append_row,
    clean_leftovers,
    read_rows,
    repair,
    results_dir,
    write_csv,
)
from migbench.benchmarks.suite import Point, Suite, SuiteError, bind, load_suite
from tqdm.auto import tqdm

import migbench
from migbench import checkpoints, registry
from migbench.api import Stack
from migbench.checkpoints import CheckpointError
from migbench.config import AUTO, RANDOM_PARTS, stable_hash
from migbench.generate import Batch, Generation, check_count, generate, merge
from migbench.images import SampleShard, grid_subset, merge_sample_shards, save_grid
from migbench.precision import explain as explain_precision
from migbench.precision import resolve as resolve_precision
from migbench.processes import die_with_parent, preload_libc
from migbench.recipe import Recipe, build_sampler
from migbench.weights import WeightsError, git_revision, read_manifest

FINGERPRINT = "batch-sha256-v2"  # samples_sha256 = samples_fingerprint(batch_sha256 of every batch)


def method_weight_hashes(recipe: Recipe) -> dict[str, str]:
    """sha256 of every weights file a method config names (``weights``, ``graphs``): a manifest
    entry's, or an imported public checkpoint's source sha256 ("missing" for neither);
    ``random`` (seeded random parts) is ``random-seed0``. A knob left at ``"auto"`` names none
    (its stack has no such weights, and the method refuses it at install)."""
    found = {}
    manifest = read_manifest()
    public = registry.checkpoints()
    for config in recipe.configs:
        for key in ("weights", "graphs"):
            name = getattr(config, key, None)
            if not isinstance(name, str) or name == AUTO:
                continue
            if name == RANDOM_PARTS:
                found[name] = "random-seed0"
            elif name in public:
                found[name] = checkpoints.record(name)["source_sha256"] if checkpoints.is_imported(name) else "missing"
            else:
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
    """Hash of what makes two rows comparable (evaluator, extractor, reference, N, and the image
    normalisation where it is not ``none``: rows from before it was recorded keep their key)."""
    keys = ("evaluator", "evaluator_version", "extractor", "feature_layer", "extractor_weights",
            "reference_sha256", "n")
    identity = {k: provenance[k] for k in keys}
    if provenance.get("image_normalisation", "none") != "none":
        identity["image_normalisation"] = provenance["image_normalisation"]
    return stable_hash(identity, length=10)


def _distributed() -> tuple[Any, int, int]:
    from accelerate import PartialState

    # the other processes wait while the main one scores a point (and merges its samples) and
    # while it writes the floors: allow hours, not the 30-min default
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(hours=6))
    return state, state.process_index, state.num_processes


def batch_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of one batch: the shape of its images, their uint8 bytes (B, H, W, C) and its
    labels (B,) as int64."""
    digest = hashlib.sha256(str(images.shape).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels, np.int64).tobytes())
    return digest.hexdigest()


def samples_fingerprint(batch_hashes: dict[int, str]) -> str:
    """A run's ``samples_sha256`` (:data:`FINGERPRINT`): sha256 of the hex :func:`batch_sha256`
    of batches 0, 1, ... joined in batch order; the same for any number of processes."""
    if sorted(batch_hashes) != list(range(len(batch_hashes))):
        raise ValueError(f"batch hashes missing: got batches {sorted(batch_hashes)}")
    return hashlib.sha256("".join(batch_hashes[j] for j in range(len(batch_hashes))).encode()).hexdigest()


@dataclass
class Shard:
    """What one process sends to the main one for a point: features, not images.

    ``generation``: its share without images (labels and indices (n_p,), costs);
    ``features``: {feature layer: (n_p, D), logits layer: (n_p, K)} in the extractor's dtype,
    rows in ``generation.indices`` order (empty without batches); ``batch_sha256``: {batch index:
    :func:`batch_sha256`}; ``grid``: its :func:`~migbench.images.grid_subset` as (images
    (g, H, W, C) uint8, labels (g,), indices (g,)), g <= 100, None without batches;
    ``samples``: its :class:`~migbench.images.SampleShard` file with ``--keep-samples``, else None.
    """

    generation: Generation
    features: dict[str, torch.Tensor]
    batch_sha256: dict[int, str]
    grid: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    samples: Path | None


class ShardEvaluator:
    """The per-batch sink of one process (``generate(..., sink=...)``): extracts each batch's
    features on ``device`` in one pass, hashes it, keeps the grid's samples and, given
    ``samples``, appends the batch to that :class:`~migbench.images.SampleShard` file."""

    def __init__(self, extractor: Extractor, device: torch.device, samples: Path | None = None) -> None:
        self.extractor = extractor
        self.device = device
        self.features: dict[str, list[torch.Tensor]] = {}
        self.batch_sha256: dict[int, str] = {}
        self.grid: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.samples = SampleShard(samples) if samples is not None else None

    def __call__(self, batch: Batch) -> None:
        for layer, feats in extract_batch(batch.images, self.extractor, self.device).items():
            self.features.setdefault(layer, []).append(feats)
        self.batch_sha256[batch.index] = batch_sha256(batch.images, batch.labels)
        images, labels, indices = batch.images, batch.labels, batch.indices
        if self.grid is not None:
            images, labels, indices = (np.concatenate(pair) for pair in zip(self.grid, (images, labels, indices),
                                                                             strict=True))
        self.grid = grid_subset(images, labels, indices)
        if self.samples is not None:
            self.samples.write(batch.images)

    def shard(self, generation: Generation) -> Shard:
        """This process's :class:`Shard`, once ``generation`` (made with this sink) is done."""
        if self.samples is not None:
            self.samples.close()
        return Shard(generation=generation, features={k: torch.cat(v) for k, v in self.features.items()},
                     batch_sha256=self.batch_sha256, grid=self.grid,
                     samples=self.samples.path if self.samples is not None else None)


@dataclass
class PointSamples:
    """A point's samples as the main process holds them after the gather, in sample-index
    order: ``generation`` (labels and indices (n,), costs; no images), ``features`` {layer:
    (n, D) float64}, ``samples_sha256`` (:data:`FINGERPRINT`) and the grid's images
    (g, H, W, C) and labels (g,)."""

    generation: Generation
    features: dict[str, torch.Tensor]
    samples_sha256: str
    grid_images: np.ndarray
    grid_labels: np.ndarray


def merge_shards(shards: list[Shard]) -> PointSamples:
    """Join the processes' shards by sample index (the shards must cover every index once)."""
    generation = merge([s.generation for s in shards])
    used = [s for s in shards if len(s.generation.indices)]
    order = torch.from_numpy(np.argsort(np.concatenate([s.generation.indices for s in used]), kind="stable"))
    features = {layer: torch.cat([s.features[layer] for s in used])[order].double() for layer in used[0].features}
    grid_images, grid_labels, _ = grid_subset(*(np.concatenate(part) for part in
                                                zip(*(s.grid for s in used if s.grid is not None), strict=True)))
    return PointSamples(generation=generation, features=features,
                        samples_sha256=samples_fingerprint({j: h for s in shards for j, h in s.batch_sha256.items()}),
                        grid_images=grid_images, grid_labels=grid_labels)


def _gather(state: Any, shard: Shard) -> list[Shard]:
    """Every process's shard, on the main process (a gather to rank 0, not an all-gather: the
    other processes get an empty list)."""
    if state.num_processes == 1:
        return [shard]
    gathered: list[Any] | None = [None] * state.num_processes if state.is_main_process else None
    torch.distributed.gather_object(shard, gathered, dst=0)
    return list(gathered) if gathered is not None else []


def free_port() -> int:
    """An unused TCP port on the loopback interface (for the processes' rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def relaunch(args: list[str], processes: int, results_root: Path | None = None, suite: Suite | None = None) -> int:
    """Run ``migbench sweep ARGS`` (``args[0]``: the suite; ``suite``: it as ARGS make it) under ``accelerate launch`` with
    ``processes`` processes: one GPU each, or CPU processes where no GPU is visible (more
    processes than GPUs is an error).

    This launcher first checks the suite's pending points (:func:`prepare`, so a bad point is
    one error here, not one per worker, and the same error whatever the machine), then the
    processes against the GPUs or cores, then holds the results folder's lock for the whole
    launch; the workers inherit it (:data:`~migbench.benchmarks.lock.INHERITED`). Every process of
    the launch dies with this one: ``accelerate`` gets SIGKILL when the launcher exits
    (``PR_SET_PDEATHSIG``, set before it starts) and each worker when ``accelerate`` exits
    (:func:`~migbench.processes.die_with_launcher`), so a SIGKILL to the launcher or its process group leaves no
    worker running on (``torch.distributed.run`` starts the workers in sessions of their own,
    out of reach of a signal to the group)."""
    gpus = torch.cuda.device_count()
    plan = prepare(suite or args[0], {}, torch.device("cuda" if gpus else "cpu"), results_root)
    if 0 < gpus < processes:  # process p runs on GPU p
        raise RuntimeError(f"--processes {processes} needs {processes} GPUs, {gpus} visible: use "
                           f"--processes {gpus}, or CPU processes (CUDA_VISIBLE_DEVICES= migbench sweep ...)")
    if not gpus and processes > (os.cpu_count() or 1):
        raise RuntimeError(f"--processes {processes} CPU processes on {os.cpu_count()} cores: use at most "
                           f"--processes {os.cpu_count()}")
    if importlib.util.find_spec("accelerate") is None:
        raise RuntimeError("`accelerate` is not installed; install it (pip install accelerate)")
    # accelerate's --cpu launcher starts a single process; its multi-process launcher
    # (torch.distributed.run) works on CPU too: PartialState(cpu=True) then picks gloo. It runs
    # as this interpreter's module: a venv may lack the `accelerate` script on PATH.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port())]
    launcher = os.getpid()
    preload_libc()  # so that the child need not load it between fork and exec
    with ResultsLock.acquire(plan.folder) as lock:
        _say_took_over(lock)
        env = {**os.environ, "MIGBENCH_LAUNCHED": "1", INHERITED: lock.holder.token, LAUNCHER_PID: str(launcher)}
        return subprocess.call([*launch, "-m", "migbench.cli", "sweep", *args], env=env,
                               preexec_fn=lambda: die_with_parent(launcher))


@dataclass
class Plan:
    """A sweep's bound ``suite``, its results ``folder``, ``extractor``, and its pending points
    with their run hashes (``todo``), all checked (:func:`check_points`)."""

    suite: Suite
    folder: Path
    extractor: Extractor
    todo: list[tuple[Point, str]]


def pending(suite: Suite, stacks: dict[str, Stack], extractor: Extractor, folder: Path, device: torch.device,
            limit: int | None = None) -> list[tuple[Point, str]]:
    """The points of ``suite`` (bound) whose run hash on ``device`` has no row in ``folder`` yet
    (each hash once), the first ``limit`` of them."""
    done = {row["run_hash"] for row in read_rows(folder)}
    todo = []
    for point, h in suite_hashes(suite, stacks, extractor, lambda p: resolve_precision(p.precision, device)):
        if h not in done:
            todo.append((point, h))
            done.add(h)
    return todo[:limit] if limit is not None else todo


def check_points(suite: Suite, todo: list[tuple[Point, str]], stacks: dict[str, Stack]) -> None:
    """Every point of ``todo`` can run: the weights it names exist and its recipe builds on its
    stack (:func:`validate`); else one error naming the points."""
    missing = missing_weights(todo)
    if missing:
        needs = "; ".join(f"{name} (runs: {', '.join(labels)})" for name, labels in missing.items())
        raise WeightsError(f"suite {suite.name} needs weights that are neither in the manifest nor imported: {needs}. "
                           "Train them (`migbench fit METHOD ...`, see README, The embedded stack) or, for public "
                           "checkpoints, `migbench import NAME FILE` (README, Reproducing paper tables).")
    for point in {(p.backbone, p.recipe): p for p, _ in todo}.values():
        validate(point, stacks[point.backbone])


def prepare(suite_name: str | Suite, stacks: dict[str, Stack], device: torch.device,
            results_root: Path | None = None, limit: int | None = None) -> Plan:
    """Load and bind the suite (stacks into the cache ``stacks``), find its pending points from
    the rows so far and check them all: every error a sweep can foresee, before it makes its
    results folder or samples anything."""
    suite = bind(suite_name if isinstance(suite_name, Suite) else load_suite(suite_name), stacks)
    folder = results_dir(suite.name, results_root)
    extractor = Extractor.named(suite.extractor, image_normalisation=suite.image_normalisation)
    check_reference(suite.reference, option=f"suite {suite.name}: reference")
    check_count(suite.n, f"suite {suite.name}: n")
    todo = pending(suite, stacks, extractor, folder, device, limit)
    check_points(suite, todo, stacks)
    return Plan(suite, folder, extractor, todo)


def _say_took_over(lock: ResultsLock) -> None:
    if lock.took_over is not None:
        print(f"took over the stale lock of {lock.folder} ({lock.took_over.describe()}, gone)", file=sys.stderr)


def _hold(state: Any, folder: Path) -> ResultsLock | None:
    """The main process takes ``folder``'s lock (or, under :func:`relaunch`, checks its
    launcher's) and gets it (the others get None); every process raises the same
    :class:`LockError` if it cannot."""
    lock, error = None, None
    if state.is_main_process:
        try:
            token = os.environ.get(INHERITED)
            lock = ResultsLock.inherit(folder, token) if token else ResultsLock.acquire(folder)
            _say_took_over(lock)
        except LockError as err:
            error = str(err)
    if state.num_processes > 1:
        box = [error]
        torch.distributed.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise LockError(error)
    return lock


def sweep(suite_name: str | Suite, *, results_root: Path | None = None, floors: bool = True,
          keep_samples: bool = False, progress: bool = True, limit: int | None = None) -> Path:
    """Run the pending points of ``suite_name`` (a name, a path, or a parsed Suite); returns the
    results folder.

    Every pending point is checked first (:func:`prepare`); then the main process holds the
    folder's lock (:mod:`~migbench.benchmarks.lock`) for the whole sweep, removes what killed
    sweeps left (:func:`~migbench.benchmarks.results.clean_leftovers`) and the points are found
    again under the lock, so two sweeps of one folder never run a point twice."""
    stacks: dict[str, Stack] = {}
    state, rank, world = _distributed()
    device = state.device
    plan = prepare(suite_name, stacks, device, results_root, limit)
    suite, folder, extractor = plan.suite, plan.folder, plan.extractor
    lock = _hold(state, folder)
    try:
        if state.is_main_process:
            dropped = repair(folder)
            if dropped:
                print(f"dropped {dropped} incomplete line(s) from {folder}/results.jsonl")
            removed = clean_leftovers(folder)
            if removed:
                print(f"removed {removed} scratch file(s) a killed sweep left in {folder}")
        state.wait_for_everyone()
        checked = {h for _, h in plan.todo}
        todo = pending(suite, stacks, extractor, folder, device, limit)
        check_points(suite, [(p, h) for p, h in todo if h not in checked], stacks)
        _run(state, suite, todo, stacks, extractor, folder, lock, floors=floors, keep_samples=keep_samples,
             progress=progress)
    finally:
        if lock is not None:
            lock.release()
    return folder


def _run(state: Any, suite: Suite, todo: list[tuple[Point, str]], stacks: dict[str, Stack], extractor: Extractor,
         folder: Path, lock: ResultsLock | None, *, floors: bool, keep_samples: bool, progress: bool) -> None:
    """Sample, score and record every point of ``todo`` (each process its share)."""
    device, rank, world = state.device, state.process_index, state.num_processes
    if state.is_main_process:
        declared = sorted({point.precision for point, _ in todo})
        print(f"suite {suite.name}: {len(suite.points)} points, {len(suite.points) - len(todo)} done, "
              f"{len(todo)} to run on {world} process(es) of {device}; "
              + ", ".join(explain_precision(p, device) for p in declared))
        if floors and todo and stacks[suite.backbone].dataset.floors:
            try:
                _write_floors(folder, suite)
            except ValueError as err:
                print(f"quality floors skipped: {err}")
    bar = tqdm(todo, desc=f"sweep {suite.name}", unit="point", disable=not (progress and state.is_main_process))
    for point, h in bar:
        bar.set_postfix_str(f"{point.label} {dict(point.swept)} seed={point.seed}")
        stack = stacks[point.backbone]
        sink = ShardEvaluator(extractor, device, folder / "samples" / f"{h}.shard{rank}" if keep_samples else None)
        part = generate(stack, point.recipe, suite.n, point.seed, batch_size=suite.batch_size,
                        device=device, process_index=rank, num_processes=world, precision=point.precision,
                        head_dtype=point.head_dtype, progress=progress and state.is_main_process, sink=sink,
                        image_normalisation=suite.image_normalisation)
        shards = _gather(state, sink.shard(part))
        if state.is_main_process:
            result = merge_shards(shards)
            if keep_samples:
                shape = next(s.grid[0].shape[1:] for s in shards if s.grid is not None)
                merge_sample_shards(folder / "samples" / f"{h}.npz",
                                    [(s.samples, s.generation.indices) for s in shards], shape,
                                    result.generation.labels)
            _record(folder, suite, point, h, stack, result, extractor, device, world, lock)
        state.wait_for_everyone()
    if state.is_main_process:
        write_csv(folder)


def validate(point: Point, stack: Stack) -> None:
    """Build ``point``'s sampler on ``stack``, so that a recipe that cannot run there
    (``maskgit.steps`` above its number of tokens) fails as a :class:`SuiteError` naming the
    point before the sweep samples anything. Warnings are left to the sampling itself."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build_sampler(point.recipe, stack)
    except ValueError as err:
        raise SuiteError(f"run {point.label!r} at {dict(point.swept)} on {point.backbone}: {err}") from err


def suite_hashes(suite: Suite, stacks: dict[str, Stack], extractor: Extractor,
                 precision_of: Callable[[Point], str]) -> list[tuple[Point, str]]:
    """Every point of ``suite`` (bound: :func:`bind`, which loaded ``stacks``) with its run hash
    at the precision ``precision_of(point)``."""
    out = []
    for point in suite.points:
        hashes = {**stacks[point.backbone].weight_hashes, **method_weight_hashes(point.recipe)}
        out.append((point, run_hash(point, suite, hashes, extractor.describe(), precision_of(point))))
    return out


def current_hashes(suite_name: str) -> list[str] | None:
    """Run hashes of the suite as it is defined now, in suite order, at every precision a point
    may have been sampled in on some machine (``auto`` is bf16 or fp32); None if no such suite,
    or if its public checkpoint files are not imported here (their sha256s are in the hashes)."""
    try:
        suite = load_suite(suite_name)
    except SuiteError:
        return None
    stacks: dict[str, Stack] = {}
    try:
        suite = bind(suite, stacks)
    except CheckpointError as err:  # the run hashes hold the files' sha256s: unknown without them
        print(f"{err}; without it every row of {suite.name} is kept, rows of older definitions included",
              file=sys.stderr)
        return None
    hashes: list[str] = []
    extractor = Extractor.named(suite.extractor, image_normalisation=suite.image_normalisation)
    for used in ("bf16", "fp32", "fp16"):
        hashes += [h for point, h in suite_hashes(suite, stacks, extractor, lambda _, used=used: used)
                   if used in possible_precisions(point.precision)]
    return list(dict.fromkeys(hashes))


def _write_floors(folder: Path, suite: Suite) -> None:
    from migbench.benchmarks.metrics.floors import floors as compute_floors

    path = folder / "floors.json"
    result = compute_floors(suite.n, suite.reference)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _record(folder: Path, suite: Suite, point: Point, h: str, stack: Stack, result: PointSamples,
            extractor: Extractor, device: torch.device, world: int, lock: ResultsLock | None) -> None:
    generation = result.generation
    evaluation = evaluate_features(result.features, generation.labels, suite.reference, extractor, device=device)
    save_grid(folder / "grids" / f"{h}.png", result.grid_images, result.grid_labels, stack.dataset.class_names)
    provenance = {**evaluation["provenance"], "weights": {**stack.weight_hashes, **method_weight_hashes(point.recipe)},
                  "seed": point.seed,
                  "git_revision": git_revision(), "device": str(device), "processes": world,
                  "python": platform.python_version(), "migbench": migbench.__version__,
                  "sampler_version": migbench.SAMPLER_VERSION, "method_versions": method_versions(point.recipe),
                  "precision": generation.precision, "head_dtype": generation.head_dtype,
                  "fingerprint": FINGERPRINT}
    row = {"suite": suite.name, "label": point.label, "backbone": point.backbone,
           "methods": list(point.recipe.methods), "swept": dict(point.swept),
           "overrides": dict(point.overrides), "recipe": point.recipe.describe(), "n": suite.n,
           "seed": point.seed, "batch_size": suite.batch_size, "reference": suite.reference,
           "precision": generation.precision, "head_dtype": generation.head_dtype, "run_hash": h,
           "samples_sha256": result.samples_sha256, "metrics": evaluation["metrics"],
           "cost": {"nfe_per_image": generation.nfe_per_image,
                    "images_per_second": round(generation.images_per_second, 2),
                    "sampling_seconds": round(generation.sampling_seconds, 2),
                    "extra_parameters": generation.extra_parameters},
           "provenance": provenance, "provenance_key": provenance_key(provenance),
           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if not append_row(folder, row, lock):
        print(f"run {h} already has a row in {folder}: not appended again", file=sys.stderr)
