"""Precision chosen for the machine: detection, resolution, autocast, fp32 head, and what rows record."""

import pytest
import torch
from migbench.backbones.toy import toy
from migbench.benchmarks.report import current_rows
from migbench.benchmarks.results import read_rows, results_dir
from migbench.benchmarks.suite import SuiteError, load_suite, parse_suite
from migbench.benchmarks.sweep import current_hashes, run_hash

from migbench import precision
from migbench.generate import generate
from migbench.recipe import resolve


@pytest.fixture
def native(monkeypatch):
    """``native(flag)`` makes the CPU look as if it did (or did not) run bf16 natively."""
    def set_native(flag: bool) -> None:
        monkeypatch.setattr(precision, "cpu_native_bf16", lambda: flag)
    return set_native


def test_auto_takes_bf16_only_where_native(native) -> None:
    native(False)
    assert precision.resolve("auto", "cpu") == "fp32"
    native(True)
    assert precision.resolve("auto", "cpu") == "bf16"
    for explicit in ("bf16", "fp16", "fp32"):
        assert precision.resolve(explicit, "cpu") == explicit
    assert precision.accelerate_mixed_precision("fp32", "cpu") == "no"
    assert precision.accelerate_mixed_precision("bf16", "cpu") == "bf16"


def test_cpu_detection_reads_the_probes(monkeypatch) -> None:
    precision.cpu_native_bf16.cache_clear()
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert precision.cpu_native_bf16() is True
    precision.cpu_native_bf16.cache_clear()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert precision.cpu_native_bf16() is False
    precision.cpu_native_bf16.cache_clear()


def test_bad_precision_is_one_line_error() -> None:
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp16, fp32, got 'fp8'"):
        precision.resolve("fp8", "cpu")
    with pytest.raises(ValueError, match="head_dtype must be one of"):
        with precision.autocast("bf16", "cpu", head_dtype="fp64"):
            pass


def test_autocast_and_fp32_head() -> None:
    head = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with precision.autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
        assert precision.run_head(head, x).dtype == torch.float32
    with precision.autocast("bf16", "cpu"):
        assert precision.run_head(head, x).dtype == torch.bfloat16
    with precision.autocast("bf16", "cpu", head_dtype="fp32"):
        out = precision.run_head(head, x.bfloat16())
    assert out.dtype == torch.float32
    assert torch.equal(out, head(x.bfloat16().float()))
    assert precision.run_head(head, x).dtype == torch.float32  # the setting ends with its context


def test_generate_records_and_obeys_precision(native) -> None:
    stack, recipe = toy(), resolve(["maskgit"], {})
    native(False)
    auto = generate(stack, recipe, 8, 0, batch_size=4, precision="auto", progress=False)
    fp32 = generate(stack, recipe, 8, 0, batch_size=4, precision="fp32", progress=False)
    assert auto.precision == fp32.precision == "fp32"
    assert (auto.images == fp32.images).all()
    bf16 = generate(stack, recipe, 8, 0, batch_size=4, precision="bf16", head_dtype="fp32", progress=False)
    assert (bf16.precision, bf16.head_dtype) == ("bf16", "fp32")


def test_suite_precision_keys(tmp_path) -> None:
    runs = [{"label": "a"}, {"label": "b", "precision": "fp32", "head_dtype": "fp32"}]
    suite = parse_suite({"backbone": "toy", "precision": "bf16", "runs": runs})
    assert [(p.precision, p.head_dtype) for p in suite.points] == [("bf16", "auto"), ("fp32", "fp32")]
    with pytest.raises(SuiteError, match="precision must be one of auto, bf16, fp16, fp32, got 'half'"):
        parse_suite({"precision": "half", "runs": [{"label": "a"}]})
    with pytest.raises(SuiteError, match=r"runs\[0\].head_dtype must be one of"):
        parse_suite({"runs": [{"label": "a", "head_dtype": "bf16"}]})


def test_precision_is_part_of_the_run_identity() -> None:
    suite = parse_suite({"backbone": "toy", "runs": [{"label": "a"}]})
    point = suite.points[0]
    hashes = {used: run_hash(point, suite, {"w": "0"}, {"e": "1"}, used) for used in ("bf16", "fp16", "fp32")}
    assert len(set(hashes.values())) == 3


def test_committed_results_stay_current() -> None:
    """Every committed row is still a current point of its suite (no sample-changing edit
    went in without rerunning), and the precision suite holds both precisions."""
    for suite in ("fmnist_full", "fmnist_ka_ablation", "fmnist_probes", "fmnist_precision", "fmnist_self_guidance"):
        rows = read_rows(results_dir(suite))
        wanted = set(current_hashes(suite))
        stale = [r["label"] for r in rows if r["run_hash"] not in wanted]
        assert not stale, (suite, stale)
    rows, stale = current_rows("fmnist_precision")
    assert stale == 0 and {r.get("precision", "bf16") for r in rows} >= {"bf16"}


def test_report_labels_carry_precision_when_rows_mix(tmp_path) -> None:
    from migbench.benchmarks.results import append_row

    folder = tmp_path / "mixed"
    for i, used in enumerate(("bf16", "fp32")):
        append_row(folder, {"run_hash": f"h{i}", "label": "maskgit", "precision": used})
    rows, _ = current_rows("mixed", tmp_path)
    assert [r["label"] for r in rows] == ["maskgit [bf16]", "maskgit [fp32]"]


def test_regression_suite_samples_in_fp32_everywhere() -> None:
    assert {p.precision for p in load_suite("ci_regression").points} == {"fp32"}
