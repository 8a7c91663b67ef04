"""CI regression: the fixed-seed suite stays within its committed baseline's two-sample tolerance,
and the same check flags a real regression."""

import json
import tempfile
from pathlib import Path

import pytest
from migbench.benchmarks.regression import (
    BASELINE,
    BASELINE_SEEDS,
    check,
    compare,
    regression_suite,
    run_suite,
    tolerance,
)


def baseline() -> dict:
    return json.loads(BASELINE.read_text())


def test_ci_regression_suite_matches_baseline() -> None:
    failures = check()
    assert not failures, "\n".join(failures)


def test_check_flags_lost_class_conditioning() -> None:
    """A sampler that ignores the class (CFG at w = -1 leaves the unconditional logits) must fail
    the same check, on whatever device runs it, even from one seed (the tolerance widens to it)."""
    with tempfile.TemporaryDirectory() as tmp:
        perturbed = regression_suite(seeds=(0,), overrides={"maskgit.cfg_scale": -1.0}, labels=("maskgit",))
        current = run_suite(Path(tmp), perturbed)
    failures = compare(current, {"runs": {"maskgit": baseline()["runs"]["maskgit"]}})
    assert any("class_accuracy" in f for f in failures), failures


def test_stale_baseline_fails_before_sampling(monkeypatch) -> None:
    from migbench.benchmarks import regression

    monkeypatch.setattr(regression, "suite_identity", lambda suite: "another definition")
    monkeypatch.setattr(regression, "run_suite", lambda *a, **k: pytest.fail("sampled despite a stale baseline"))
    [failure] = check()
    assert failure.startswith("stale baseline") and "--update" in failure


def test_tolerance_is_the_two_sample_bound() -> None:
    # Z s sqrt(1/3 + 1/12) = 5 * 0.02 * 0.6455 = 0.06455
    assert abs(tolerance("class_accuracy", 0.02, 3, 12) - 0.0645497) < 1e-6
    assert tolerance("class_accuracy", 0.0, 3, 12) == 0.005  # the floor


def test_compare_flags_a_moved_metric() -> None:
    base = baseline()
    assert base["seeds"] == list(BASELINE_SEEDS)
    label, metrics = next(iter(base["runs"].items()))
    current = {lab: {m: list(v["values"][:3]) for m, v in ms.items()} for lab, ms in base["runs"].items()}
    shift = {lab: {m: [v["mean"]] * 3 for m, v in ms.items()} for lab, ms in base["runs"].items()}
    assert compare(shift, base) == []
    tol = tolerance("fid", metrics["fid"]["sd"], 3, len(metrics["fid"]["values"]))
    shift[label]["fid"] = [metrics["fid"]["mean"] + 1.01 * tol] * 3
    assert any("fid" in f for f in compare(shift, base))
    del current[label]
    assert any("missing" in f for f in compare(current, base))
