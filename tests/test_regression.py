"""CI regression: the fixed-seed suite stays within its committed baseline's tolerances."""

import json

from migbench.benchmarks.regression import BASELINE, check, compare


def test_ci_regression_suite_matches_baseline() -> None:
    failures = check()
    assert not failures, "\n".join(failures)


def test_compare_flags_a_moved_metric() -> None:
    baseline = json.loads(BASELINE.read_text())
    label, metrics = next(iter(baseline["runs"].items()))
    current = {lab: {m: dict(v) for m, v in ms.items()} for lab, ms in baseline["runs"].items()}
    assert compare(current, baseline) == []
    current[label]["fid"]["mean"] = metrics["fid"]["mean"] + 2 * metrics["fid"]["tolerance"]
    assert any("fid" in f for f in compare(current, baseline))
    del current[label]
    assert any("missing" in f for f in compare(current, baseline))
