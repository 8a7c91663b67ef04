"""Issue #21: every bad input is one clear error before any work (toy backbone, tiny inputs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from migbench.backbones.toy import toy
from migbench.benchmarks.metrics import evaluate as ev
from migbench.benchmarks.metrics.fmnist_classifier import (
    EXTRACTOR_NAME,
    FEATURE_LAYER,
    LOGITS_LAYER,
)
from migbench.benchmarks.suite import SuiteError, parse_suite
from migbench.benchmarks.sweep import validate

from migbench import cli
from migbench.recipe import build_sampler, resolve

FAKE = ev.Extractor(EXTRACTOR_NAME, FEATURE_LAYER, LOGITS_LAYER, "random-test-weights")

KNOB_CASES = [
    ("maskgit", "maskgit.temperature", "nan", "maskgit.temperature = 'nan': a float knob must be a finite"),
    ("maskgit", "maskgit.temperature", "1e-45", "maskgit.temperature = 1e-45 scales logits by 1e+45"),
    ("maskgit", "maskgit.temperature", "0", "maskgit.temperature must be > 0"),
    ("maskgit", "maskgit.cfg_scale", "nan", "maskgit.cfg_scale = 'nan': a float knob must be a finite"),
    ("maskgit", "maskgit.cfg_scale", float("inf"), "maskgit.cfg_scale = inf: a float knob must be a finite"),
    ("maskgit", "maskgit.ratios", "0.5,nan", "maskgit.ratios = 'nan'"),
    ("halton", "halton.sm_temp_max", "nan", "halton.sm_temp_max = 'nan': a float knob must be a finite"),
    ("halton", "halton.sm_temp_min", "0", "halton.sm_temp_min = 0.0 scales logits by 0"),
    ("halton", "halton.steps", "0", "halton.steps must be >= 1, got 0"),
    ("emigm", "emigm.steps", "0", "emigm.steps must be >= 1, got 0"),
    ("maskgit", "maskgit.steps", "0", "maskgit.steps must be >= 1, got 0"),
]


@pytest.mark.parametrize(("methods", "key", "value", "fragment"), KNOB_CASES)
def test_bad_knob_value_is_refused_when_resolved(methods: str, key: str, value: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace("+", r"\+")):
        resolve(methods, {key: value})


def test_inf_multiplier_temperature_is_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        resolve("maskgit", {"maskgit.temperature_mode": "multiplier", "maskgit.temperature": "inf"})
    with pytest.raises(ValueError, match="scales logits by 1e"):
        resolve("maskgit", {"maskgit.temperature_mode": "multiplier", "maskgit.temperature": "1e40"})


STEP_CASES = [
    ("maskgit", "maskgit.steps", 65),
    ("halton", "halton.steps", 1_000_000_000),
    ("emigm", "emigm.steps", 1_000_000_000),
]


@pytest.mark.parametrize(("methods", "key", "value"), STEP_CASES)
def test_more_steps_than_tokens_is_refused_at_build_time(methods: str, key: str, value: int) -> None:
    recipe = resolve(methods, {key: value})
    with pytest.raises(ValueError, match=f"{key} = {value} must lie in \\[1, 64\\]"):
        build_sampler(recipe, toy())


def test_a_step_count_the_base_does_not_use_is_not_checked() -> None:
    with pytest.warns(UserWarning, match="no effect"):
        build_sampler(resolve("halton", {"maskgit.steps": 65}), toy())


SUITE_CASES = [
    ({"n": 5}, "need n >= 10"),
    ({"set": {"maskgit.cfg_scale": float("nan")}}, "maskgit.cfg_scale = nan"),
    ({"set": {"maskgit.temperature": 1e-45}}, "maskgit.temperature = 1e-45"),
]


@pytest.mark.parametrize(("top", "fragment"), SUITE_CASES)
def test_bad_suite_fails_at_load(top: dict[str, Any], fragment: str) -> None:
    with pytest.raises(SuiteError, match=fragment):
        parse_suite({"backbone": "toy", **top, "runs": [{"label": "a", "methods": ["maskgit"]}]})


def test_sweep_validates_a_point_against_its_backbone() -> None:
    suite = parse_suite({"backbone": "toy", "runs": [{"label": "a", "grid": {"maskgit.steps": [8, 65]}}]})
    stack = toy()
    validate(suite.points[0], stack)
    with pytest.raises(SuiteError, match="run 'a' at {'maskgit.steps': 65} on toy: maskgit.steps = 65"):
        validate(suite.points[1], stack)


def features(n: int, classes: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {FEATURE_LAYER: torch.randn(n, 8, generator=gen, dtype=torch.float64),
            LOGITS_LAYER: torch.randn(n, classes, generator=gen, dtype=torch.float64)}


METRIC_CASES = [
    (5, None, "samples: need at least 10 images"),
    (2, None, "samples: need at least 10 images"),
    (20, np.arange(20) % 10 + 5, r"labels must be classes 0..9, got values in \[5, 14\]"),
    (20, -np.ones(20, dtype=np.int64), r"labels must be classes 0..9"),
    (20, np.zeros(19, dtype=np.int64), "19 labels of dtype int64 for 20 samples"),
    (20, np.zeros(20), "labels of dtype float64"),
]


@pytest.mark.parametrize(("n", "labels", "fragment"), METRIC_CASES)
def test_bad_evaluation_input_is_refused(n: int, labels: np.ndarray | None, fragment: str) -> None:
    with pytest.raises(ev.EvaluationError, match=fragment):
        ev.metrics_from_features(features(n), features(40, seed=1), FAKE, labels=labels, prc=False)


def test_too_few_reference_images_is_refused() -> None:
    with pytest.raises(ev.EvaluationError, match="reference: need at least 10"):
        ev.metrics_from_features(features(20), features(4, seed=1), FAKE, prc=False)


def test_a_nan_metric_is_never_a_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ev, "isc_features_to_metric",
                        lambda *a, **k: {ev.KEY_METRIC_ISC_MEAN: float("nan"), ev.KEY_METRIC_ISC_STD: 0.0})
    with pytest.raises(ev.EvaluationError, match="not finite"):
        ev.metrics_from_features(features(20), features(40, seed=1), FAKE, prc=False)


IMAGE_CASES = [
    ((12, 32, 32, 3), "RGB images differ between channels"),
    ((12, 28, 28, 1), "scores 32x32 images, got \\(12, 28, 28, 1\\)"),
    ((12, 64, 64, 3), "scores 32x32 images"),
]


@pytest.mark.parametrize(("shape", "fragment"), IMAGE_CASES)
def test_images_the_extractor_cannot_score_are_refused(shape: tuple[int, ...], fragment: str) -> None:
    images = np.zeros(shape, dtype=np.uint8)
    images[..., -1] = 1  # RGB with a channel unlike the others
    with pytest.raises(ev.EvaluationError, match=fragment):
        ev.extract_batch(images, FAKE, "cpu")


def samples_file(tmp_path: Path, kind: str) -> Path:
    """A samples .npz of the given kind: few, truncated, rgb, bad_labels."""
    path = tmp_path / f"{kind}.npz"
    n = 4 if kind == "few" else 12
    images = np.zeros((n, 32, 32, 3 if kind == "rgb" else 1), dtype=np.uint8)
    images[..., 0] = 255  # red, for rgb
    labels = np.arange(n) % 10 + (20 if kind == "bad_labels" else 0)
    np.savez(path, arr_0=images, arr_1=labels)
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    return path


CLI_CASES = [
    ("sample", ["sample", "--backbone", "toy", "--classes", "abc"], "--classes expects comma-separated class ids"),
    ("sample", ["sample", "--backbone", "toy", "--set", "maskgit.temperature=nan"], "maskgit.temperature = 'nan'"),
    ("sample", ["sample", "--backbone", "toy", "--set", "halton.steps=0", "--methods", "halton"],
     "halton.steps must be >= 1"),
    ("sample", ["sample", "--backbone", "toy", "--set", "maskgit.steps=65"], "maskgit.steps = 65 must lie in"),
    ("sample", ["sample", "--backbone", "toy", "--n", str(10**13)], "can't allocate memory"),
    ("sample", ["sample", "--backbone", "toy1d", "--methods", "halton"], "method halton needs image tokens on a 2-D grid"),
    ("eval", ["eval", "{few}"], "need at least 10 images"),
    ("eval", ["eval", "{truncated}"], "is not a valid samples file"),
    ("eval", ["eval", "{rgb}"], "RGB images differ between channels"),
    ("eval", ["eval", "{bad_labels}"], "labels must be classes 0..9"),
]


@pytest.mark.parametrize(("command", "argv", "fragment"), CLI_CASES)
def test_cli_exits_2_with_one_line(command: str, argv: list[str], fragment: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    files = {kind: str(samples_file(tmp_path, kind)) for kind in ("few", "truncated", "rgb", "bad_labels")}
    argv = [a.format(**files) for a in argv]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"migbench {command}: error: ") and fragment in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sampling or scoring fails the test: the checks must come first."""
    from migbench.benchmarks import sweep as sweep_module

    from migbench import generate

    def work(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("work started before the inputs were checked")

    monkeypatch.setattr(generate, "generate", work)
    monkeypatch.setattr(sweep_module, "generate", work)
    monkeypatch.setattr(ev, "evaluate", work)


def tree(root: Path) -> list[str]:
    """Every path under ``root`` (to see that a refused command left nothing)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


UNWRITABLE = "/proc/migbench-no-such-folder"  # no process, root included, can create anything here

PARSE_CASES = [
    (["floors", "--n", "0"], "migbench floors: error: argument --n: must be >= 1, got 0"),
    (["floors", "--n", "-3"], "argument --n: must be >= 1, got -3"),
    (["floors", "--n", "ten"], "argument --n: expects a whole number >= 1, got 'ten'"),
    (["sample", "--n", "0"], "migbench sample: error: argument --n: must be >= 1, got 0"),
    (["sample", "--batch-size", "-1"], "argument --batch-size: must be >= 1, got -1"),
    (["sweep", "toy", "--processes", "0"], "argument --processes: must be >= 1, got 0"),
    (["train", "backbone", "--steps", "0"], "argument --steps: must be >= 1, got 0"),
    (["diagnose", "ka_mig", "--maps", "0"], "argument --maps: must be >= 1, got 0"),
    (["sample", "--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
    (["fit", "ka_mig", "--set", "steps=0"], "steps must be >= 1, got 0"),
    (["fit", "token_critic", "--set", "lr=nan"], "lr"),
    (["sample", "--seed", "-1"], "migbench sample: error: argument --seed: must be >= 0, got -1"),
    (["floors", "--seed", "1.5"], "argument --seed: expects a whole number >= 0, got '1.5'"),
]


@pytest.mark.parametrize(("argv", "fragment"), PARSE_CASES)
def test_bad_option_is_refused_at_parse(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


OUTPUT_CASES = [
    ("sample", ["sample", "--backbone", "toy", "--out", "{file}"], "--out {file} is a file, not a folder"),
    ("sample", ["sample", "--backbone", "toy", "--out", "{file}/sub"], "--out {file}/sub: {file} is a file"),
    ("sample", ["sample", "--backbone", "toy", "--out", UNWRITABLE], f"--out {UNWRITABLE}: cannot write in /proc"),
    ("eval", ["eval", "{samples}", "--out", "{folder}"], "--out {folder} is a folder, not a file"),
    ("eval", ["eval", "{samples}", "--out", f"{UNWRITABLE}/eval.json"], "cannot write in /proc"),
    ("eval", ["eval", "{samples}", "--out", "{file}/eval.json"], "{file} is a file"),
    ("eval", ["eval", "{folder}/missing.npz"], "{folder}/missing.npz is neither a samples .npz nor a folder"),
    ("sweep", ["sweep", "{suite}", "--results", "{file}"], "--results {file} is a file, not a folder"),
    ("sweep", ["sweep", "{suite}", "--results", UNWRITABLE], "cannot write in /proc"),
    ("sweep", ["sweep", "{bad_suite}", "--results", "{folder}/results", "--processes", "2"],
     "run 'a' at {{'maskgit.steps': 65}} on toy: maskgit.steps = 65 must lie in"),
    ("sweep", ["sweep", "{bad_suite}", "--results", "{folder}/results"], "maskgit.steps = 65 must lie in"),
    ("sweep", ["sweep", "{folder}/missing.toml", "--results", "{folder}/results"], "no suite"),
    ("diagnose", ["diagnose", "ka_mig", "--out", "{folder}"], "--out {folder} is a folder, not a file"),
    ("report", ["report", "{suite}", "--reports", "{file}"], "--reports {file} is a file, not a folder"),
    ("report", ["report", "{suite}", "--reports", UNWRITABLE], "cannot write in /proc"),
    ("report", ["report", "{suite}", "--results", "{folder}/results", "--reports", "{folder}/reports"],
     "no current results in {folder}/results/toy_suite"),
]


@pytest.mark.parametrize(("command", "argv", "fragment"), OUTPUT_CASES)
def test_bad_path_is_one_line_before_any_work(command: str, argv: list[str], fragment: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str], no_work: None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from migbench.benchmarks import sweep as sweep_module

    work = tmp_path / "work"
    (work / "folder").mkdir(parents=True)
    (work / "file").write_text("not a folder\n")
    suite = work / "toy_suite.toml"
    suite.write_text('backbone = "toy"\nn = 16\n[[runs]]\nlabel = "a"\nmethods = ["maskgit"]\n')
    bad_suite = work / "bad_suite.toml"
    bad_suite.write_text('backbone = "toy"\nn = 16\n[[runs]]\nlabel = "a"\ngrid = { "maskgit.steps" = [8, 65] }\n')
    names = {"file": work / "file", "folder": work / "folder", "samples": samples_file(work, "rgb"),
             "suite": suite, "bad_suite": bad_suite}
    monkeypatch.setattr(sweep_module.subprocess, "call", lambda *a, **k: pytest.fail("launched workers"))
    before = tree(work)
    argv = [a.format(**names) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"migbench {command}: error: "), err
    assert fragment.format(**names) in err[0], err
    assert tree(work) == before  # nothing left behind: no results folder, no report, no scratch file


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("argv", [["sample", "--backbone", "toy", "--out", "{ro}/out"],
                                  ["eval", "{samples}", "--out", "{ro}/eval.json"], ["eval", "{ro}/rgb.npz"],
                                  ["sweep", "{suite}", "--results", "{ro}"], ["report", "x", "--reports", "{ro}"]])
def test_read_only_folder_is_refused(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     no_work: None) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    samples = samples_file(ro, "rgb")
    suite = tmp_path / "toy_suite.toml"
    suite.write_text('backbone = "toy"\nn = 16\n[[runs]]\nlabel = "a"\nmethods = ["maskgit"]\n')
    ro.chmod(0o555)
    try:
        assert cli.main([a.format(ro=ro, samples=samples, suite=suite) for a in argv]) == 2
    finally:
        ro.chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot write in {ro}" in err[0], err


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_a_broken_manifest_is_named(text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "manifest.json").write_text(text)
    monkeypatch.setenv("MIGBENCH_WEIGHTS", str(tmp_path))
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"file {tmp_path / 'manifest.json'} is not a valid weights manifest" in err[0], err
