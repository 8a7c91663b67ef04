"""CI regression: a small fixed-seed suite compared with a committed baseline.

The baseline stores, per run label and metric, the mean over the suite's seeds and a
tolerance: the half-width of the 95% Student-t interval over those seeds (the seed-to-seed
noise of that metric at that N), floored at ``MIN_TOLERANCE`` of the metric's scale. A check
fails when a metric's new mean leaves baseline mean ± tolerance.

    migbench regress            # run the suite into a temp folder and compare
    migbench regress --update   # rerun and rewrite the baseline (after an intended change)
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from migbench.benchmarks.report import interval
from migbench.benchmarks.results import read_rows, results_dir
from migbench.benchmarks.sweep import sweep

SUITE = "ci_regression"
BASELINE = Path(__file__).resolve().parent / "baselines" / f"{SUITE}.json"
CHECKED = ("fid", "is_mean", "precision", "recall", "class_accuracy")
MIN_TOLERANCE = {"fid": 0.05, "is_mean": 0.01, "precision": 0.005, "recall": 0.005, "class_accuracy": 0.005}


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{label: {metric: {"mean": m, "tolerance": t}}} over the seeds of each label."""
    import pandas as pd

    out: dict[str, dict[str, dict[str, float]]] = {}
    frame = pd.DataFrame([{"label": r["label"], **r["metrics"]} for r in rows])
    for label, group in frame.groupby("label"):
        out[str(label)] = {}
        for metric in CHECKED:
            mean, half = interval(group[metric])
            out[str(label)][metric] = {"mean": round(mean, 6),
                                       "tolerance": round(max(half, MIN_TOLERANCE[metric]), 6)}
    return out


def run_suite(root: Path) -> dict[str, dict[str, dict[str, float]]]:
    sweep(SUITE, results_root=root, floors=False, progress=False)
    return summarise(read_rows(results_dir(SUITE, root)))


def compare(current: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """Human-readable failures: metrics outside baseline mean ± tolerance, missing labels."""
    failures = []
    for label, metrics in baseline["runs"].items():
        if label not in current:
            failures.append(f"{label}: missing from the current run")
            continue
        for metric, ref in metrics.items():
            value = current[label][metric]["mean"]
            if abs(value - ref["mean"]) > ref["tolerance"]:
                failures.append(f"{label} {metric}: {value:.4f} outside {ref['mean']:.4f} ± {ref['tolerance']:.4f}")
    return failures


def check(update: bool = False) -> list[str]:
    """Run the suite in a temporary folder; compare with (or, with ``update``, rewrite) the baseline."""
    with tempfile.TemporaryDirectory() as tmp:
        current = run_suite(Path(tmp))
    if update:
        BASELINE.parent.mkdir(parents=True, exist_ok=True)
        BASELINE.write_text(json.dumps({"suite": SUITE, "runs": current}, indent=2, sort_keys=True) + "\n")
        return []
    if not BASELINE.exists():
        return [f"no baseline at {BASELINE}; create it with `migbench regress --update`"]
    return compare(current, json.loads(BASELINE.read_text()))
