"""Result rows: one JSON line per finished point in ``results/<suite>/results.jsonl``, plus a CSV.

Appending is one ``write`` of a whole line to a file opened in append mode, followed by fsync;
a process killed mid-write can leave at most one partial last line, which :func:`repair` drops
before the next sweep appends (so no corrupt line ever survives a rerun).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from migbench.paths import repo_root

RESULTS_FILE = "results.jsonl"


def results_dir(suite: str, root: Path | None = None) -> Path:
    """``results/<suite>`` under ``root`` (default: the checkout, or ``MIGBENCH_RESULTS``)."""
    base = root or Path(os.environ.get("MIGBENCH_RESULTS", repo_root() / "results"))
    return base / suite


def read_rows(folder: Path) -> list[dict[str, Any]]:
    """Every complete, parseable row (a partial trailing line is ignored)."""
    path = folder / RESULTS_FILE
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


def repair(folder: Path) -> int:
    """Rewrite the results file without partial or unparseable lines; returns how many went."""
    path = folder / RESULTS_FILE
    if not path.exists():
        return 0
    text = path.read_text(encoding="utf-8")
    rows = read_rows(folder)
    good = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    dropped = len(text.splitlines()) - len(rows)
    if dropped:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(good, encoding="utf-8")
        os.replace(tmp, path)
    return dropped


def append_row(folder: Path, row: dict[str, Any]) -> None:
    """Append one row as a single line, durably."""
    folder.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(folder / RESULTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


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
