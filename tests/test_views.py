"""Report views: precision-recall / density-coverage, FID against cost, per-class scores; drawn
from the rows, readable at 20 runs, summarised at 1,000 classes, older rows drawn without them."""

import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from migbench.benchmarks.per_class import best_points, plot_per_class
from migbench.benchmarks.plots import cost_front, plot_cost, plot_precision_recall
from migbench.benchmarks.report import aggregate, report
from migbench.benchmarks.results import append_row
from migbench.benchmarks.views import older_rows_note


def row(label: str, value: float, seed: int, classes: int | None = 10, new_metrics: bool = True) -> dict:
    """A result row whose metrics depend on (label, value, seed); ``new_metrics`` False is a row
    recorded before density/coverage and per-class scores."""
    rng = np.random.default_rng(zlib.crc32(f"{label}/{value}/{seed}".encode()))
    metrics = {"fid": 10 + value + rng.uniform(0, 3), "is_mean": 4 + rng.uniform(0, 1), "kid_mean": 0.01,
               "precision": rng.uniform(0.7, 0.95), "recall": rng.uniform(0.3, 0.7), "class_accuracy": 0.9}
    if new_metrics:
        metrics.update(density=rng.uniform(0.6, 1.2), coverage=rng.uniform(0.4, 0.8))
        if classes:
            fid = rng.uniform(5, 40, classes).tolist()
            fid[0] = None  # a class without enough samples
            metrics["per_class"] = {"class_accuracy": rng.uniform(0.5, 1.0, classes).tolist(), "fid": fid,
                                    "n": [500] * classes, "n_reference": [6000] * classes, "feature_dim": 256,
                                    "reference_classes": "labels"}
    return {"label": label, "backbone": "fmnist", "seed": seed, "n": 5000, "run_hash": f"{label}-{value}-{seed}",
            "swept": {"maskgit.choice_temperature": value}, "metrics": metrics, "precision": "fp32",
            "cost": {"nfe_per_image": {"total": 8.0 + 2 * (len(label) % 3)},
                     "images_per_second": float(rng.uniform(20, 40)), "extra_parameters": {}},
            "provenance_key": "k1", "created": "2026-01-01T00:00:00+00:00",
            "provenance": {"n": 5000, "reference": "fmnist-train", "reference_sha256": "ab" * 32,
                           "reference_n": 60000, "evaluator": "torch-fidelity", "evaluator_version": "0.4.0",
                           "extractor": "fmnist-classifier", "feature_layer": "features", "logits_layer": "logits",
                           "extractor_weights": "cd" * 32, "torch": "2", "git_revision": "abc", "device": "cpu",
                           "processes": 1}}


def suite_rows(runs: int, classes: int | None = 10, seeds: int = 2) -> list[dict]:
    return [row(f"run {i}", value, seed, classes) for i in range(runs) for value in (1.0, 2.0)
            for seed in range(seeds)]


def render(tmp_path: Path, rows: list[dict]) -> Path:
    for r in rows:
        append_row(tmp_path / "results" / "fixture", r)
    return report("fixture", results_root=tmp_path / "results", reports_root=tmp_path / "reports")


def test_plotted_points_are_their_rows(tmp_path) -> None:
    rows = suite_rows(2)
    table = aggregate(rows)
    seeds = [r for r in rows if r["label"] == "run 1" and r["swept"]["maskgit.choice_temperature"] == 2.0]
    drawn = plot_precision_recall(table, None, tmp_path / "pr.png", "t")
    point = drawn[(drawn["label"] == "run 1") & (drawn["swept"] == "choice_temperature=2.0")].iloc[0]
    for metric in ("precision", "recall", "density", "coverage"):
        assert point[metric] == pytest.approx(np.mean([r["metrics"][metric] for r in seeds]))
    cost = plot_cost(table, None, tmp_path / "cost.png", "t", "cpu, fp32")
    point = cost[(cost["label"] == "run 1") & (cost["swept"] == "choice_temperature=2.0")].iloc[0]
    assert point["nfe"] == seeds[0]["cost"]["nfe_per_image"]["total"]
    assert point["seconds_per_1000"] == pytest.approx(1000 / max(r["cost"]["images_per_second"] for r in seeds))
    points = best_points(rows)
    best = min((r for r in rows if r["label"] == "run 1"), key=lambda r: np.mean(
        [s["metrics"]["fid"] for s in rows if s["label"] == "run 1" and s["swept"] == r["swept"]]))
    same = [r for r in rows if r["label"] == "run 1" and r["swept"] == best["swept"]]
    frames = plot_per_class(points, tmp_path / "pc.png", "t", [f"class {c}" for c in range(10)])
    assert frames["kind"] == "heatmap" and frames["fid"].shape == (2, 10)
    cell = frames["class_accuracy"].iloc[1]["class 3"]
    assert cell == pytest.approx(np.mean([r["metrics"]["per_class"]["class_accuracy"][3] for r in same]))
    assert np.isnan(frames["fid"].iloc[1]["class 0"])  # no value: drawn blank, not as zero


def test_cost_front() -> None:
    points = pd.DataFrame({"fid": [20.0, 18.0, 25.0, 16.0, 17.0], "nfe": [8, 8, 16, 10, 16]})
    assert cost_front(points, "nfe")["fid"].tolist() == [18.0, 16.0]


def test_report_with_20_runs(tmp_path) -> None:
    path = render(tmp_path, suite_rows(20, seeds=1))
    text = path.read_text()
    for name in ("fid_is.png", "precision_recall.png", "fid_cost.png", "per_class.png"):
        assert (path.parent / name).stat().st_size > 20_000, name
    assert "### Quality against diversity" in text and "### Per-class scores" in text
    assert "|   density |   coverage ↑ |" in text and "predate" not in text
    assert "n < 2 × 256 for 200 of 200 (run, class) cells" in text


def test_report_with_1000_classes_summarises(tmp_path) -> None:
    rows = suite_rows(3, classes=1000, seeds=1)
    path = render(tmp_path, rows)
    text = path.read_text()
    assert "10 worst classes of 1000" in text and "10 best classes of 1000" in text
    assert len(text.splitlines()) < 200  # a summary, not a row per class
    drawn = plot_per_class(best_points(rows), tmp_path / "pc.png", "t")
    assert drawn["kind"] == "summary" and drawn["fid"].shape == (3, 1000)


def test_older_rows_are_drawn_without_the_new_metrics(tmp_path) -> None:
    rows = suite_rows(2, seeds=1) + [row("old run", 1.0, 0, new_metrics=False)]
    text = render(tmp_path, rows).read_text()
    assert text.count("predate") == 1
    assert "*1 of 5 rows predate density/coverage and per-class scores: they are drawn without them.*" in text
    assert "old run (" not in text.split("### Per-class scores")[1].split("###")[0]
    assert older_rows_note(suite_rows(1), None) == ""
