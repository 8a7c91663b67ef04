"""Harness: strict suites, resumable sweeps surviving SIGKILL, 1 vs 2 processes, reports."""

import json
import os
import pickle
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
    """CPU processes explicitly (so this also passes on a machine with one GPU). 20 samples in
    batches of 8: process 0 runs batches 0 and 2 (the last one partial), process 1 batch 1."""
    from migbench.benchmarks.metrics.evaluate import Extractor, evaluate
    from migbench.benchmarks.sweep import batch_sha256, samples_fingerprint

    from migbench.images import load_samples

    suite = toy_suite(tmp_path, n=20)
    outputs, samples, grids = {}, {}, {}
    for processes in (1, 2):
        root = tmp_path / f"p{processes}"
        proc = run_cli("sweep", str(suite), "--results", str(root), "--no-floors", "--keep-samples",
                       "--processes", str(processes), env_extra={"CUDA_VISIBLE_DEVICES": ""})
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
        folder = root / "toy_suite"
        rows = read_rows(folder)
        assert len(rows) == 5 and {r["provenance"]["processes"] for r in rows} == {processes}
        assert {r["provenance"]["device"].split(":")[0] for r in rows} == {"cpu"}  # cpu:0 under gloo
        outputs[processes] = {r["run_hash"]: (r["samples_sha256"], r["metrics"]) for r in rows}
        # one merged samples.npz per point; the shards and temporary files are gone
        assert sorted(p.name for p in (folder / "samples").iterdir()) == sorted(f"{h}.npz" for h in outputs[processes])
        samples[processes] = {h: load_samples(folder / "samples" / f"{h}.npz") for h in outputs[processes]}
        grids[processes] = {h: (folder / "grids" / f"{h}.png").read_bytes() for h in outputs[processes]}
    assert outputs[1] == outputs[2]
    assert grids[1] == grids[2]
    for row in read_rows(tmp_path / "p2" / "toy_suite"):
        images, labels = samples[2][row["run_hash"]]
        np.testing.assert_array_equal(images, samples[1][row["run_hash"]][0])
        assert images.shape == (20, 32, 32, 1) and labels.tolist() == [i % 10 for i in range(20)]
        hashes = {j: batch_sha256(images[j * 8:(j + 1) * 8], labels[j * 8:(j + 1) * 8]) for j in range(3)}
        assert row["samples_sha256"] == samples_fingerprint(hashes)
        assert row["provenance"]["fingerprint"] == "batch-sha256-v2"
        # metrics from the gathered features == metrics of the merged images (extracted per sampling batch)
        direct = evaluate(images, labels, row["reference"], Extractor.fmnist(), batch_size=row["batch_size"],
                          device="cpu")
        assert direct["metrics"] == row["metrics"]


def test_processes_send_features_not_images(tmp_path, monkeypatch) -> None:
    """The gather carries features, hashes, labels, indices and at most 100 grid samples: at 240
    samples its pickle is bounded by those, not by the 240 images."""
    from migbench.benchmarks import sweep as sweep_module

    sent = []
    real_gather = sweep_module._gather

    def spy(state, shard):
        sent.append(shard)
        return real_gather(state, shard)

    monkeypatch.setattr(sweep_module, "_gather", spy)
    n = 240
    sweep_module.sweep(str(toy_suite(tmp_path, n=n)), results_root=tmp_path / "results", floors=False,
                       progress=False, limit=1)
    (shard,) = sent
    assert shard.generation.images.shape[0] == 0 and len(shard.generation.indices) == n
    grid_images, grid_labels, _ = shard.grid
    assert len(grid_images) == 100 and np.bincount(grid_labels).tolist() == [10] * 10
    features = sum(t.numel() * t.element_size() for t in shard.features.values())
    assert {len(t) for t in shard.features.values()} == {n} and len(shard.batch_sha256) == n // 8
    bound = features + grid_images.nbytes + 8 * (3 * n + len(grid_labels) * 2) + 64 * len(shard.batch_sha256) + 16_384
    assert len(pickle.dumps(shard)) <= bound < features + n * grid_images[0].nbytes


def test_sample_shards_merge_into_one_adm_file(tmp_path) -> None:
    from migbench.images import SampleShard, load_samples, merge_sample_shards

    rng = np.random.default_rng(0)
    n, batch, processes = 23, 3, 3
    images = rng.integers(0, 256, (n, 4, 6, 3), dtype=np.uint8)
    labels = rng.integers(0, 7, n)
    shards = []
    for p in range(processes):
        shard = SampleShard(tmp_path / f"x.shard{p}")
        indices = [np.arange(j * batch, min(n, (j + 1) * batch)) for j in range(p, -(-n // batch), processes)]
        for idx in indices:
            shard.write(images[idx])
        shard.close()
        shards.append((shard.path, np.concatenate(indices)))
    shards.append((None, np.zeros(0, np.int64)))  # a process without batches
    merge_sample_shards(tmp_path / "s.npz", shards, images.shape[1:], labels, chunk=4)
    got, got_labels = load_samples(tmp_path / "s.npz")
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_labels.dtype == np.int64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]
    with pytest.raises(ValueError, match="exactly once"):
        merge_sample_shards(tmp_path / "t.npz", [(None, np.zeros(0, np.int64))], images.shape[1:], labels)


def test_grid_subset_of_shards_is_that_of_all() -> None:
    from migbench.images import grid_subset

    rng = np.random.default_rng(1)
    n = 400
    labels = rng.integers(0, 13, n)
    images = rng.integers(0, 256, (n, 2, 2, 1), dtype=np.uint8)
    indices = rng.permutation(n)
    whole = grid_subset(images, labels, indices)
    order = np.argsort(indices)
    expected = np.concatenate([order[labels[order] == c][:10] for c in range(10)])
    expected = expected[np.argsort(indices[expected])]
    np.testing.assert_array_equal(whole[2], indices[expected])
    parts = [grid_subset(images[s], labels[s], indices[s]) for s in (slice(0, 150), slice(150, 151), slice(151, n))]
    merged = grid_subset(*(np.concatenate(x) for x in zip(*parts, strict=True)))
    for a, b in zip(whole, merged, strict=True):
        np.testing.assert_array_equal(a, b)


def test_more_processes_than_gpus_is_refused(monkeypatch) -> None:
    import torch
    from migbench.benchmarks.sweep import relaunch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match="needs 2 GPUs, 1 visible"):
        relaunch(["suite"], 2)


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
