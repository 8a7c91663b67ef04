"""Result rows: one JSON line per finished point in ``results/<suite>/results.jsonl``, plus a CSV.

Appending is one ``write`` of a whole line to a file opened in append mode, followed by fsync;
a process killed mid-write can leave at most one partial last line, which :func:`repair` drops
before the next sweep appends (so no corrupt line ever survives a rerun).

Rows are keyed by their run hash: :func:`append_row` never appends a row whose run hash the file
already holds (the sweep appends under its folder's lock, :mod:`.lock`), and :func:`read_rows`
keeps only the first row of each run hash (a file written before the lock existed may hold
duplicates; :func:`duplicate_rows` counts them for the report).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
from migbench.benchmarks.lock import LOCK_FILE, ResultsLock

from migbench.paths import repo_root
from migbench.processes import process_alive

RESULTS_FILE = "results.jsonl"


def results_root(root: Path | None = None) -> Path:
    """The results root: ``root``, else ``MIGBENCH_RESULTS``, else the checkout's ``results/``."""
    return root or Path(os.environ.get("MIGBENCH_RESULTS", repo_root() / "results"))


def results_dir(suite: str, root: Path | None = None) -> Path:
    """``results/<suite>`` under :func:`results_root`."""
    return results_root(root) / suite


def _parse(path: Path) -> list[dict[str, Any]]:
    """Every complete, parseable line of ``path`` (a partial trailing line is ignored)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_rows(folder: Path) -> list[dict[str, Any]]:
    """Every complete, parseable row, the first of each run hash only."""
    rows, seen = [], set()
    for row in _parse(folder / RESULTS_FILE):
        key = row.get("run_hash")
        if key is None or key not in seen:
            rows.append(row)
            seen.add(key)
    return rows


def duplicate_rows(folder: Path) -> int:
    """How many rows repeat the run hash of an earlier row (:func:`read_rows` leaves them out)."""
    return len(_parse(folder / RESULTS_FILE)) - len(read_rows(folder))


def repair(folder: Path) -> int:
    """Rewrite the results file without partial or unparseable lines; returns how many went."""
    path = folder / RESULTS_FILE
    if not path.exists():
        return 0
    text = path.read_text(encoding="utf-8")
    rows = _parse(path)
    good = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    dropped = len(text.splitlines()) - len(rows)
    if dropped:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(good, encoding="utf-8")
        os.replace(tmp, path)
    return dropped


def append_row(folder: Path, row: dict[str, Any], lock: ResultsLock | None = None) -> bool:
    """Append one row as a single line, durably, unless a row of its run hash is already there
    (then False). Given the sweep's ``lock``, first check it is still held."""
    if lock is not None:
        lock.check()
    path = folder / RESULTS_FILE
    if "run_hash" in row and row["run_hash"] in {r.get("run_hash") for r in _parse(path)}:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def clean_leftovers(folder: Path) -> int:
    """Remove what killed sweeps left in ``folder`` (call it holding the folder's lock):
    scratch files (``*.tmp``), raw sample shards (``samples/*.shard<P>``) and lock scratch files
    of gone processes. Returns how many went."""
    gone = [p for sub in ("", "grids", "samples") for p in (folder / sub).glob("*.tmp")]
    gone += list((folder / "samples").glob("*.shard*"))
    for scratch in folder.glob(f"{LOCK_FILE}.*.new"):
        pid = scratch.name[len(LOCK_FILE) + 1:].split("-")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            gone.append(scratch)
    for path in gone:
        path.unlink(missing_ok=True)
    return len(gone)


def flatten(row: dict[str, Any]) -> dict[str, Any]:
    """A result row as one flat record for tables: swept knobs, metrics and costs as columns."""
    flat: dict[str, Any] = {"label": row["label"], "backbone": row["backbone"], "seed": row["seed"],
                            "n": row["n"], "run_hash": row["run_hash"]}
    flat.update({k: v for k, v in row["swept"].items()})
    flat.update({k: v for k, v in row["metrics"].items() if not isinstance(v, dict)})  # per_class: not a column
    flat["nfe"] = row["cost"]["nfe_per_image"]["total"]
    flat["images_per_s"] = row["cost"]["images_per_second"]
    extra = row["cost"].get("extra_parameters", {})
    flat["extra_params_online"] = sum(v.get("online", 0) for v in extra.values())
    flat["extra_params_precomputed"] = sum(v.get("precomputed", 0) for v in extra.values())
    flat["provenance"] = row["provenance_key"]
    return flat


def write_csv(folder: Path) -> Path:
    """Compile ``results.csv`` from the JSON lines (atomic replace)."""
    rows = read_rows(folder)
    path = folder / "results.csv"
    tmp = path.with_suffix(".csv.tmp")
    pd.DataFrame([flatten(r) for r in rows]).to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path
