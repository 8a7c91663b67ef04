"""CI regression: a small fixed-seed suite compared with a committed baseline, on any device.

Why a statistical tolerance and not the samples themselves: a CUDA generator draws another
random stream than a CPU one, and another CPU's kernels round differently, so on another
machine the same seed gives other samples, which behave like new seeds. The check therefore
asks whether the suite's metrics are consistent with the baseline's *seed distribution*:

- the baseline (``migbench regress --update``) runs the suite with ``BASELINE_SEEDS`` seeds and
  stores every seed's value of each metric, their mean m and standard deviation s;
- the check runs the suite's own seeds (n = 3) and fails a metric whose mean m' satisfies

      |m' - m| > max(Z * s * sqrt(1/n + 1/n_base), MIN_TOLERANCE[metric])

  the two-sample bound for a difference of means of independent seeds. With Z = 5 and
  n_base = 12 (11 degrees of freedom for s), a healthy run on another device fails one of the ten
  checked metrics with probability about 0.4% (Student t; on the baseline's own machine kind less,
  since the check's seeds 0-2 are among the baseline's); a shift of 3.2 seed standard deviations
  is caught about half the time, one of 5 almost always.

The baseline also stores the suite's identity (everything but the seeds: backbone and weights,
N, reference, batch, precision, every run's recipe); a check against a baseline of another
identity fails with "stale baseline" instead of comparing numbers made under other conditions.

The suite samples in fp32 on every device (``precision = "fp32"`` in its TOML): the check then
compares seeds, not precisions (bf16 against fp32 is measured separately, ``fmnist_precision``).
What it catches, measured on the maskgit run (3 seeds, N = 200, fp32): class conditioning lost
(class accuracy 0.105 against 0.883 ± 0.058), Gumbel noise off (FID 33.9 against 23.9 ± 9.3, IS
and recall too), softmax temperature 1.3 instead of 1 (four metrics); what it misses: the linear
instead of the cosine reveal schedule (FID 27.8, every metric inside). ``tests/test_regression.py``
runs the first through the same check.

    migbench regress            # run the suite into a temp folder and compare
    migbench regress --update   # rerun with BASELINE_SEEDS seeds and rewrite the baseline
"""

from __future__ import annotations

import json
import math
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

from migbench.benchmarks.results import read_rows, results_dir
from migbench.benchmarks.suite import Suite, parse_suite, suite_path
from migbench.benchmarks.sweep import sweep

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SUITE = "ci_regression"
BASELINE = Path(__file__).resolve().parent / "baselines" / f"{SUITE}.json"
CHECKED = ("fid", "is_mean", "precision", "recall", "class_accuracy")
MIN_TOLERANCE = {"fid": 0.05, "is_mean": 0.01, "precision": 0.005, "recall": 0.005, "class_accuracy": 0.005}
BASELINE_SEEDS = tuple(range(12))
Z = 5.0


def per_seed(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """{label: {metric: [value per seed, in seed order]}}."""
    out: dict[str, dict[str, list[float]]] = {}
    for row in sorted(rows, key=lambda r: (r["label"], r["seed"])):
        metrics = out.setdefault(row["label"], {m: [] for m in CHECKED})
        for metric in CHECKED:
            metrics[metric].append(float(row["metrics"][metric]))
    return out


def summarise(values: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{label: {metric: {"values", "mean", "sd"}}}: per-seed values, their mean and sample SD."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for label, metrics in values.items():
        out[label] = {}
        for metric, vals in metrics.items():
            mean = sum(vals) / len(vals)
            sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            out[label][metric] = {"values": [round(v, 6) for v in vals], "mean": round(mean, 6), "sd": round(sd, 6)}
    return out


def tolerance(metric: str, sd: float, n_check: int, n_base: int) -> float:
    """Z s sqrt(1/n_check + 1/n_base), floored at the metric's MIN_TOLERANCE."""
    return max(Z * sd * math.sqrt(1.0 / n_check + 1.0 / n_base), MIN_TOLERANCE[metric])


def regression_suite(seeds: tuple[int, ...] | None = None, overrides: dict[str, Any] | None = None,
                     labels: tuple[str, ...] | None = None) -> Suite:
    """The regression suite, or a variant with other seeds, extra knob overrides for every run
    (a perturbation) or only some runs. Run hashes do not depend on the suite's name, so a
    variant's unchanged points are the suite's own."""
    path = suite_path(SUITE)
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    if seeds is not None:
        raw["seeds"] = list(seeds)
    if overrides:
        raw["set"] = {**raw.get("set", {}), **overrides}
    if labels is not None:
        raw["runs"] = [run for run in raw["runs"] if run["label"] in labels]
    return parse_suite(raw, path)


def run_suite(root: Path, suite: Suite | None = None, progress: bool = False) -> dict[str, dict[str, list[float]]]:
    """Sweep the regression suite (or a variant of it) into ``root``; per-seed metrics."""
    suite = suite or regression_suite()
    sweep(suite, results_root=root, floors=False, progress=progress)
    return per_seed(read_rows(results_dir(suite.name, root)))


def compare(current: dict[str, dict[str, list[float]]], baseline: dict[str, Any]) -> list[str]:
    """Human-readable failures: metric means outside the baseline's two-sample tolerance, missing labels."""
    failures = []
    for label, metrics in baseline["runs"].items():
        if label not in current:
            failures.append(f"{label}: missing from the current run")
            continue
        for metric, ref in metrics.items():
            values = current[label][metric]
            mean = sum(values) / len(values)
            tol = tolerance(metric, ref["sd"], len(values), len(ref["values"]))
            if abs(mean - ref["mean"]) > tol:
                failures.append(f"{label} {metric}: {mean:.4f} over {len(values)} seeds outside "
                                f"{ref['mean']:.4f} ± {tol:.4f} (baseline: {len(ref['values'])} seeds, sd {ref['sd']:.4f})")
    return failures


def suite_identity(suite: Suite) -> str:
    """Hash of what the baseline's numbers depend on, the seeds aside: backbone and its weights,
    N, reference, batch size, precision and every run's resolved recipe."""
    from migbench.benchmarks.suite import bind

    from migbench.config import stable_hash

    loaded: dict[str, Any] = {}
    suite = bind(suite, loaded)
    stacks = {p.backbone: loaded[p.backbone].weight_hashes for p in suite.points}
    runs = sorted({(p.label, p.backbone, p.precision, p.head_dtype, stable_hash(p.recipe.describe()))
                   for p in suite.points})
    return stable_hash({"n": suite.n, "reference": suite.reference, "batch_size": suite.batch_size,
                        "weights": stacks, "runs": runs})


def environment() -> dict[str, str]:
    """Where a baseline was measured (informative: the check holds on any device)."""
    import torch

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")] if Path("/proc/cpuinfo").exists() else []
        device = f"{names[0] if names else platform.machine()} ({len(names) or '?'} cores), CPU"
    precisions = ", ".join(sorted({p.precision for p in regression_suite().points}))
    return {"device": device, "precision": precisions, "torch": torch.__version__,
            "python": platform.python_version()}


def check(update: bool = False, progress: bool = False) -> list[str]:
    """Run the suite in a temporary folder; compare with (or, with ``update``, rewrite) the
    baseline. A missing or stale baseline fails before anything is sampled."""
    if not update:
        if not BASELINE.exists():
            return [f"no baseline at {BASELINE}; create it with `migbench regress --update`"]
        baseline = json.loads(BASELINE.read_text())
        if baseline.get("identity") != suite_identity(regression_suite()):
            return [f"stale baseline: {BASELINE.name} was measured for another definition of the {SUITE} "
                    "suite (N, reference, batch, precision, weights or recipes); rerun `migbench regress --update`"]
    with tempfile.TemporaryDirectory() as tmp:
        current = run_suite(Path(tmp), regression_suite(BASELINE_SEEDS if update else None), progress)
    if not update:
        return compare(current, baseline)
    BASELINE.parent.mkdir(parents=True, exist_ok=True)
    document = {"suite": SUITE, "seeds": list(BASELINE_SEEDS), "z": Z, "environment": environment(),
                "identity": suite_identity(regression_suite()), "runs": summarise(current)}
    tmp_path = BASELINE.with_suffix(".tmp")
    tmp_path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    tmp_path.replace(BASELINE)
    return []
