"""Harness: strict suites, resumable sweeps surviving SIGKILL, 1 vs 2 processes, reports."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from migbench.benchmarks.report import aggregate, cost_table, interval, pareto_front, report
from migbench.benchmarks.results import RESULTS_FILE, append_row, read_rows, repair
from migbench.benchmarks.suite import SuiteError, load_suite, parse_suite

TOY_SUITE = """
backbone = "toy"
n = {n}
seeds = [0]
batch_size = 8
reference = "{ref}"

[[runs]]
label = "maskgit"
methods = ["maskgit"]
grid = {{ "maskgit.choice_temperature" = [0.5, 1.0, 2.0] }}

[[runs]]
label = "halton"
methods = ["halton"]
grid = {{ "halton.sm_temp_max" = [1.0, 1.5] }}
"""


def toy_suite(tmp_path: Path, n: int = 16) -> Path:
    ref = tmp_path / "ref.npz"
    rng = np.random.default_rng(0)
    np.savez(ref, arr_0=rng.integers(0, 256, (40, 32, 32, 1), dtype=np.uint8), arr_1=np.arange(40) % 10)
    path = tmp_path / "toy_suite.toml"
    path.write_text(TOY_SUITE.format(n=n, ref=ref))
    return path


def run_cli(*args: str, env_extra: dict | None = None, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "migbench.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_typo_in_suite_suggests_the_key(tmp_path) -> None:
    with pytest.raises(SuiteError, match="did you mean 'grid'"):
        parse_suite({"runs": [{"label": "a", "grdi": {}}]})
    with pytest.raises(SuiteError, match="did you mean 'seeds'"):
        parse_suite({"seed": [0], "runs": [{"label": "a"}]})
    with pytest.raises(SuiteError, match="did you mean 'choice_temperature'"):
        parse_suite({"runs": [{"label": "a", "grid": {"maskgit.choice_temprature": [1.0]}}]})
    with pytest.raises(SuiteError, match="used twice"):
        parse_suite({"runs": [{"label": "a"}, {"label": "a"}]})
    with pytest.raises(SuiteError, match="fmnist_quick"):
        load_suite("fmnist_quik")


def test_suite_expands_grid_times_seeds(tmp_path) -> None:
    suite = load_suite(str(toy_suite(tmp_path)))
    assert len(suite.points) == 5
    assert suite.points[0].swept == (("maskgit.choice_temperature", 0.5),)
    assert all(p.recipe.config("maskgit").steps == 8 for p in suite.points)


def test_committed_suites_parse() -> None:
    from migbench.benchmarks.suite import SUITES_DIR

    names = sorted(p.stem for p in SUITES_DIR.glob("*.toml"))
    assert {"fmnist_quick", "fmnist_full", "ci_regression"} <= set(names)
    for name in names:
        assert load_suite(name).points


def test_a_bumped_method_version_reruns_only_its_points(tmp_path, monkeypatch) -> None:
    from migbench.benchmarks.sweep import run_hash

    from migbench import registry

    suite = load_suite(str(toy_suite(tmp_path)))

    def hashes() -> list[str]:
        return [run_hash(p, suite, {"w": "0"}, {"e": "1"}, "bf16") for p in suite.points]

    before = hashes()
    monkeypatch.setattr(registry.method("halton"), "version", 2, raising=False)
    after = hashes()
    changed = [b != a for b, a in zip(before, after, strict=True)]
    assert changed == ["halton" in p.recipe.methods for p in suite.points]
    assert any(changed) and not all(changed)


def test_partial_line_is_dropped(tmp_path) -> None:
    append_row(tmp_path, {"a": 1})
    with open(tmp_path / RESULTS_FILE, "a") as f:
        f.write('{"a": 2, "b"')
    assert read_rows(tmp_path) == [{"a": 1}]
    assert repair(tmp_path) == 1
    assert (tmp_path / RESULTS_FILE).read_text() == '{"a": 1}\n'


def test_sweep_survives_sigkill(tmp_path) -> None:
    suite = toy_suite(tmp_path, n=40)
    results = tmp_path / "results"
    proc = run_cli("sweep", str(suite), "--results", str(results), "--no-floors")
    lines = results / "toy_suite" / RESULTS_FILE
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if lines.exists() and lines.read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(lines, "a") as f:  # what a kill in the middle of a write would leave
        f.write('{"run_hash": "torn')
    done_before = len(read_rows(lines.parent))
    assert 1 <= done_before < 5
    rerun = run_cli("sweep", str(suite), "--results", str(results), "--no-floors")
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out
    rows = [json.loads(line) for line in lines.read_text().splitlines()]
    assert len(rows) == 5 and len({r["run_hash"] for r in rows}) == 5
    assert (results / "toy_suite" / "results.csv").exists()


def test_one_and_two_processes_agree(tmp_path) -> None:
    suite = toy_suite(tmp_path)
    outputs = {}
    for processes in (1, 2):
        root = tmp_path / f"p{processes}"
        proc = run_cli("sweep", str(suite), "--results", str(root), "--no-floors",
                       "--processes", str(processes))
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
        rows = read_rows(root / "toy_suite")
        assert len(rows) == 5 and {r["provenance"]["processes"] for r in rows} == {processes}
        outputs[processes] = {r["run_hash"]: (r["samples_sha256"], r["metrics"]) for r in rows}
    assert outputs[1] == outputs[2]


def fake_row(label, value, seed, fid, is_mean, key="k1"):
    return {"label": label, "backbone": "fmnist", "seed": seed, "n": 100, "run_hash": f"{label}{value}{seed}",
            "swept": {"maskgit.choice_temperature": value},
            "metrics": {"fid": fid, "is_mean": is_mean, "kid_mean": 0.01, "precision": 0.5,
                        "recall": 0.5, "class_accuracy": 0.9},
            "cost": {"nfe_per_image": {"total": 8.0}, "images_per_second": 50.0,
                     "extra_parameters": {}},
            "provenance_key": key, "created": f"2026-01-0{seed + 1}T00:00:00+00:00",
            "provenance": {"n": 100, "reference": "fmnist-test", "reference_sha256": "ab" * 32,
                           "reference_n": 10000, "evaluator": "torch-fidelity", "evaluator_version": "0.4.0",
                           "extractor": "fmnist-classifier", "feature_layer": "features",
                           "logits_layer": "logits", "extractor_weights": "cd" * 32, "torch": "2",
                           "git_revision": "abc", "device": "cpu", "processes": 1}}


def test_report_from_fixture(tmp_path) -> None:
    folder = tmp_path / "results" / "fixture"
    rows = [fake_row("maskgit", t, s, fid=10 + t + s, is_mean=5 - t / 10 + s / 10)
            for t in (1.0, 2.0) for s in (0, 1)]
    rows.append(fake_row("halton", 1.0, 0, fid=20.0, is_mean=3.0))
    for row in rows:
        append_row(folder, row)
    path = report("fixture", results_root=tmp_path / "results", reports_root=tmp_path / "reports")
    text = path.read_text()
    assert (path.parent / "fid_is.png").stat().st_size > 10_000
    assert "| maskgit | choice_temperature=1.0" in text and "11.50 ± 6.35" in text
    rows[1]["cost"] = {**rows[1]["cost"], "images_per_second": 20.0}  # seed 1 ran under load
    table = aggregate(rows)
    assert table["images_per_s"].tolist() == [50.0, 50.0, 50.0]  # the fastest seed
    assert list(pareto_front(table)["label"]) == ["maskgit"]
    assert interval(pd.Series([10.5])) == (10.5, 0.0)


def test_cost_table_relative_to_the_first_run() -> None:
    guided = fake_row("guided", 1.0, 0, 9.0, 5.0)
    guided["cost"] = {"nfe_per_image": {"total": 16.0}, "images_per_second": 25.0,
                      "extra_parameters": {"x": {"online": 1000, "precomputed": 500}}}
    text = cost_table(aggregate([fake_row("maskgit", 1.0, 0, 10.0, 5.0), guided]))
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()[2:]]
    assert rows == [["maskgit", "8", "50.0", "1.00x", "0", "0"], ["guided", "16", "25.0", "2.00x", "1,000", "500"]]


def test_report_splits_provenance_groups(tmp_path) -> None:
    folder = tmp_path / "results" / "mixed"
    append_row(folder, fake_row("maskgit", 1.0, 0, 10.0, 5.0, key="k1"))
    append_row(folder, fake_row("maskgit", 1.0, 0, 12.0, 5.0, key="k2"))
    text = report("mixed", results_root=tmp_path / "results", reports_root=tmp_path / "reports").read_text()
    assert "Provenance group `k1`" in text and "Provenance group `k2`" in text


def test_update_readme_replaces_only_the_block(tmp_path) -> None:
    from migbench.benchmarks.report import update_readme

    folder = tmp_path / "results" / "fixture"
    append_row(folder, fake_row("maskgit", 1.0, 0, 10.0, 5.0))
    readme = tmp_path / "README.md"
    readme.write_text("head\n<!-- fixture:begin -->\nold\n<!-- fixture:end -->\ntail\n")
    update_readme("fixture", readme, tmp_path / "results")
    text = readme.read_text()
    assert text.startswith("head\n<!-- fixture:begin -->") and text.endswith("<!-- fixture:end -->\ntail\n")
    assert "old" not in text and "| maskgit |" in text and "fid_is.png" in text


def test_sweep_names_untrained_weights_before_sampling(tmp_path) -> None:
    from migbench.benchmarks.sweep import missing_weights

    suite = toy_suite(tmp_path)
    text = suite.read_text() + ('\n[[runs]]\nlabel = "untrained"\nmethods = ["ka_mig"]\n'
                                'set = { "ka_mig.weights" = "fmnist_ka_mig_never_trained" }\n')
    suite.write_text(text)
    points = [(p, "") for p in load_suite(str(suite)).points]
    assert missing_weights(points) == {"fmnist_ka_mig_never_trained": ["untrained"]}
    proc = run_cli("sweep", str(suite), "--results", str(tmp_path / "results"), "--no-floors")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "fmnist_ka_mig_never_trained (runs: untrained)" in out
    assert not (tmp_path / "results" / "toy_suite" / RESULTS_FILE).exists()  # nothing was sampled
