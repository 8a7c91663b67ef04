"""Issue #21: every bad input is one clear error before any work (toy backbone, tiny inputs)."""

from __future__ import annotations

import os
import re
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
TOY_SUITE = 'backbone = "toy"\nn = 16\n[[runs]]\nlabel = "a"\nmethods = ["maskgit"]\n'  # one point, valid

KNOB_CASES = [
    ("maskgit", "maskgit.temperature", "nan", "maskgit.temperature = 'nan': a float knob must be a finite"),
    ("maskgit", "maskgit.temperature", "1e-45", "maskgit.temperature = 1e-45 scales logits by 1e+45"),
    ("maskgit", "maskgit.temperature", "0", "maskgit.temperature must be > 0"),
    ("maskgit", "maskgit.cfg_scale", "nan", "maskgit.cfg_scale = 'nan': a float knob must be a finite"),
    ("maskgit", "maskgit.cfg_scale", float("inf"), "maskgit.cfg_scale = inf: a float knob must be a finite"),
    ("maskgit", "maskgit.cfg_scale", "1e308", "maskgit.cfg_scale = 1e+308 scales logits by 1e+308"),
    ("self_guidance", "self_guidance.scale", "-5000", "|self_guidance.scale| must be at most 999"),
    ("maskgit", "maskgit.ratios", "0.5,nan", "maskgit.ratios = 'nan'"),
    ("halton", "halton.sm_temp_max", "nan", "halton.sm_temp_max = 'nan': a float knob must be a finite"),
    ("halton", "halton.sm_temp_min", "0", "halton.sm_temp_min = 0.0 scales logits by 0"),
    ("halton", "halton.steps", "0", "halton.steps must be >= 1, got 0"),
    ("emigm", "emigm.steps", "0", "emigm.steps must be >= 1, got 0"),
    ("maskgit", "maskgit.steps", "0", "maskgit.steps must be >= 1, got 0"),
    ("maskgit", "maskgit.temperatures", "1,1", "maskgit.temperatures has 2 values for 8 steps"),
    ("maskgit", "maskgit.cfg_scales", "(1, 1, 1)", "maskgit.cfg_scales has 3 values for 8 steps"),
    ("maskgit", "maskgit.choice_temperatures", "1,1,1,1,1,1,1,1,1", "maskgit.choice_temperatures has 9 values"),
    ("maskgit", "maskgit.choice_temperatures", "1,1,1,1,1,1,1,-1", "maskgit.choice_temperatures[7] must be >= 0, got -1"),
    ("maskgit", "maskgit.temperatures", "1,1,1,1,1,1,1,-1", "maskgit.temperatures[7] must be > 0, got -1"),
    ("maskgit", "maskgit.temperatures", "1,1,1,1,1,1,1,1e-9", "maskgit.temperatures[7] = 1e-09 scales logits by 1e+09"),
    ("maskgit", "maskgit.temperatures", "1,1,1,1,1,1,1,nan", "maskgit.temperatures = 'nan': a float knob must be"),
    ("maskgit", "maskgit.cfg_scales", "0,0,0,0,0,0,0,5000", "|maskgit.cfg_scales[7]| must be at most 999"),
    ("maskgit", "maskgit.confidence", "logits", "MaskGITConfig.confidence = 'logits'; choose from ['tempered', "),
]


@pytest.mark.parametrize(("methods", "key", "value", "fragment"), KNOB_CASES)
def test_bad_knob_value_is_refused_when_resolved(methods: str, key: str, value: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
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
    ({"preset": "valeo"}, r"unknown preset 'valeo' \(did you mean 'valeoai'\?\); known: valeoai"),
    ({"preset": "nosuch"}, "unknown preset 'nosuch'; known: valeoai"),
    ({"preset": 3}, "suite: preset must be str, got 3"),
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
    ("sample", ["sample", "--backbone", "toy", "--random-weights"], "stack toy has no random-weights mode"),
    ("sample", ["sample", "--backbone", "valeoai_maskgit_256"], "checkpoint valeoai_maskgit_256 is not imported"),
    ("sample", ["sample", "--backbone", "toy", "--set", "maskgit.temperature=nan"], "maskgit.temperature = 'nan'"),
    ("sample", ["sample", "--backbone", "toy", "--set", "halton.steps=0", "--methods", "halton"],
     "halton.steps must be >= 1"),
    ("sample", ["sample", "--backbone", "toy", "--set", "maskgit.steps=65"], "maskgit.steps = 65 must lie in"),
    ("sample", ["sample", "--backbone", "toy", "--n", str(10**13)], "--n = 10,000,000,000,000 samples: their labels"),
    ("sample", ["sample", "--backbone", "toy1d", "--methods", "halton"], "method halton needs image tokens on a 2-D grid"),
    ("eval", ["eval", "{few}"], "need at least 10 images"),
    ("eval", ["eval", "{truncated}"], "is not a valid samples file"),
    ("eval", ["eval", "{rgb}"], "RGB images differ between channels"),
    ("eval", ["eval", "{bad_labels}"], "labels must be classes 0..9"),
    ("eval", ["eval", "{labstr}"], "12 labels of dtype <U1 for 12 samples: need 12 integer labels"),
    ("eval", ["eval", "{good}", "--extractor", "inception-v3-compat", "--inception-weights", "{weights}"],
     "is not torch-fidelity's Inception weights"),
    ("sample", ["sample", "--backbone", "toy", "--classes", "99", "--n", "10"], "labels must be class ids in [0, 10)"),
]


@pytest.mark.parametrize(("command", "argv", "fragment"), CLI_CASES)
def test_cli_exits_2_with_one_line(command: str, argv: list[str], fragment: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    files = {kind: str(samples_file(tmp_path, kind)) for kind in ("few", "truncated", "rgb", "bad_labels")}
    (tmp_path / "inputs").mkdir()
    files.update({k: str(v) for k, v in input_files(tmp_path / "inputs").items()})
    argv = [a.format(**files) for a in argv]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"migbench {command}: error: ") and fragment in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("gpus", "cores", "processes", "fragment"), [
    (1, 16, 2, "--processes 2 needs 2 GPUs, 1 visible: use --processes 1, or CPU processes"),
    (0, 2, 3, "--processes 3 CPU processes on 2 cores: use at most --processes 2"),
])
def test_more_processes_than_devices_is_one_line(gpus: int, cores: int, processes: int, fragment: str,
                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 no_work: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked after the suite (so a bad suite reads the same on any machine) and before any launch."""
    from migbench.benchmarks import sweep as sweep_module

    suite = tmp_path / "toy_suite.toml"
    suite.write_text(TOY_SUITE)
    monkeypatch.setattr(sweep_module.torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(sweep_module.os, "cpu_count", lambda: cores)
    checked = []
    if gpus:  # no CUDA here: the suite's check on the GPU is only recorded
        monkeypatch.setattr(sweep_module, "prepare", lambda suite, overrides, device, root: checked.append(device))
    monkeypatch.setattr(sweep_module.subprocess, "call", lambda *a, **k: pytest.fail("launched workers"))
    argv = ["sweep", str(suite), "--results", str(tmp_path / "results"), "--processes", str(processes)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("migbench sweep: error: ") and fragment in err[0], err
    assert checked == ([torch.device("cuda")] if gpus else [])


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
    ("fetch", ["fetch", "valeoai_vqgan", "nonsense"], "unknown checkpoint 'nonsense'"),
    ("import", ["import", "valeoai_vqgan", "{folder}/missing.ckpt"], "valeoai_vqgan: no file"),
    ("import", ["import", "valeoai_vqgan", "{file}"], "is not a readable checkpoint"),
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
    ("sweep", ["sweep", "{suite}", "--results", "{folder}/results", "--n", "5"], "--n 5: need at least 10"),
    ("sweep", ["sweep", "{suite}", "--results", "{folder}/results", "--random-weights"],
     "has no random-weights mode"),
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
    suite.write_text(TOY_SUITE)
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
    suite.write_text(TOY_SUITE)
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


def input_files(root: Path) -> dict[str, Path]:
    """Every kind of bad input file (and a good samples file), by name, under ``root``."""
    from PIL import Image

    def npz(name: str, **arrays: np.ndarray) -> Path:
        np.savez(root / f"{name}.npz", **arrays)
        return root / f"{name}.npz"

    grey = np.zeros((12, 32, 32, 1), np.uint8)
    files = {"good": npz("good", arr_0=grey, arr_1=np.arange(12) % 10),
             "float": npz("float", arr_0=grey.astype(np.float32)), "rank3": npz("rank3", arr_0=grey[..., 0]),
             "noarr": npz("noarr", x=np.zeros(3)), "ch4": npz("ch4", arr_0=np.zeros((12, 32, 32, 4), np.uint8)),
             "zero": npz("zero", arr_0=grey[:0]), "lab2d": npz("lab2d", arr_0=grey, arr_1=np.zeros((12, 2))),
             "labstr": npz("labstr", arr_0=grey, arr_1=np.array(["a"] * 12))}
    (root / "empty.npz").write_bytes(b"")
    (root / "text.npz").write_text("not an archive\n")
    np.save(root / "npy.npy", grey)
    (root / "npy.npy").rename(root / "npy.npz")
    (root / "weights.pt").write_text("not a checkpoint\n")
    files.update({k: root / f"{k}.npz" for k in ("empty", "text", "npy")}, weights=root / "weights.pt",
                 missing=root / "missing.npz", file=root / "file")
    (root / "file").write_text("x\n")
    for kind in ("pngempty", "pngtrunc", "pngbad", "pngmixed", "pngrgba"):
        folder = root / kind
        folder.mkdir()
        files[kind] = folder
        if kind == "pngempty":
            continue
        for i in range(12):
            size = 28 if kind == "pngmixed" and i == 0 else 32
            pixels = np.random.default_rng(i).integers(0, 255, (size, 32, 4 if kind == "pngrgba" else 1), np.uint8)
            Image.fromarray(pixels if kind == "pngrgba" else pixels[..., 0]).save(folder / f"{i}.png")
    trunc = files["pngtrunc"] / "5.png"
    trunc.write_bytes(trunc.read_bytes()[:300])
    (files["pngbad"] / "3.png").write_text("not a png\n")
    return files


INPUT_CASES = [
    ("eval", ["eval", "{empty}"], "file {empty} is not a valid samples file"),
    ("eval", ["eval", "{text}"], "file {text} is not a valid samples file"),
    ("eval", ["eval", "{npy}"], "an .npy array, not an .npz archive"),
    ("eval", ["eval", "{float}"], "arr_0 must be uint8 (N, H, W, C), got float32"),
    ("eval", ["eval", "{rank3}"], "arr_0 must be uint8 (N, H, W, C), got uint8 (12, 32, 32)"),
    ("eval", ["eval", "{noarr}"], "{noarr} has no arr_0"),
    ("eval", ["eval", "{ch4}"], "with C in (1, 3), got (12, 32, 32, 4)"),
    ("eval", ["eval", "{zero}"], "need at least 10 images, got 0"),
    ("eval", ["eval", "{lab2d}"], "arr_1 must hold one label per image (12), got shape (12, 2)"),
    ("eval", ["eval", "{file}"], "file {file} is not a valid samples file"),
    ("eval", ["eval", "{pngempty}"], "{pngempty} holds no .png files"),
    ("eval", ["eval", "{pngtrunc}"], "file {pngtrunc}/5.png is not a valid PNG image"),
    ("eval", ["eval", "{pngbad}"], "file {pngbad}/3.png is not a valid PNG image"),
    ("eval", ["eval", "{pngmixed}"], "the PNGs in {pngmixed} differ in size or channels"),
    ("eval", ["eval", "{pngrgba}"], "with C in (1, 3), got (12, 32, 32, 4)"),
    ("eval", ["eval", "{good}", "--ref", "nosuch"], "--ref 'nosuch': unknown reference"),
    ("eval", ["eval", "{good}", "--ref", "{missing}"], "--ref {missing}: no such file"),
    ("eval", ["eval", "{good}", "--ref", "{text}"], "--ref: file {text} is not a valid reference .npz"),
    ("eval", ["eval", "{good}", "--ref", "{empty}"], "--ref: file {empty} is not a valid reference .npz"),
    ("eval", ["eval", "{good}", "--ref", "{noarr}"], "--ref: file {noarr} has no arr_0"),
    ("eval", ["eval", "{good}", "--extractor", "inception-v3-compat", "--inception-weights", "{missing}"],
     "--inception-weights {missing}: no such file"),
    ("eval", ["eval", "{good}", "--inception-weights", "{weights}"],
     "--inception-weights applies to --extractor inception-v3-compat only"),
    ("eval", ["eval", "{good}", "--extractor", "nope"], "argument --extractor: invalid choice: 'nope'"),
    ("eval", ["eval", "{good}", "--data-dir", "{file}/none"], "Fashion-MNIST: --data-dir points to"),
    ("floors", ["floors", "--ref", "{missing}"], "--ref {missing}: no such file"),
    ("floors", ["floors", "--ref", "nosuch"], "--ref 'nosuch': unknown reference"),
    ("floors", ["floors", "--n", str(10**9)], "needs more than the split holds"),
    ("sample", ["sample", "--backbone", "nosuch"], "unknown backbone 'nosuch'"),
    ("sample", ["sample", "--backbone", "toy", "--methods", "nosuch"], "unknown method 'nosuch'"),
    ("sample", ["sample", "--backbone", "toy", "--methods"], "argument --methods: expected one argument"),
    ("sample", ["sample", "--backbone", "toy", "--set", "garbage"], "--set expects key=value, got 'garbage'"),
    ("sample", ["sample", "--backbone", "toy", "--preset", "valeo"],
     "unknown preset 'valeo' (did you mean 'valeoai'?); known: valeoai"),
    ("sample", ["sample", "--backbone", "toy", "--preset", "nosuch"], "unknown preset 'nosuch'; known: valeoai"),
    ("sample", ["sample", "--backbone", "toy", "--preset"], "argument --preset: expected one argument"),
    ("sample", ["sample", "--backbone", "toy", "--set", "maskgit.nosuch=1"], "unknown knob maskgit.nosuch"),
    ("sample", ["sample", "--backbone", "toy", "--set", "maskgit.steps=abc"], "maskgit.steps: cannot read 'abc'"),
    ("sample", ["sample", "--backbone", "toy", "--set", "maskgit.steps=1.5"], "maskgit.steps: cannot read '1.5'"),
    ("sample", ["sample", "--backbone", "toy", "--set", "maskgit.steps=-1"], "maskgit.steps must be >= 1, got -1"),
    ("sample", ["sample", "--backbone", "toy", "--set", "maskgit.cfg_scale=-inf"], "must be a finite number"),
    ("sample", ["sample", "--backbone", "toy", "--set", "maskgit.temperature=-1"], "maskgit.temperature must be > 0"),
    ("sample", ["sample", "--backbone", "toy", "--set", "maskgit.cfg_scales=1,2"],
     "maskgit.cfg_scales has 2 values for 8 steps"),
    ("sample", ["sample", "--backbone", "toy", "--preset", "autonat_t8", "--set", "maskgit.steps=4"],
     "maskgit.ratios has 8 values for 4 steps"),
    ("sample", ["sample", "--backbone", "toy", "--classes", ","], "--classes expects comma-separated class ids"),
    ("sample", ["sample", "--backbone", "toy", "--n", "1e3"], "argument --n: expects a whole number >= 1, got '1e3'"),
    ("sample", ["sample", "--backbone", "toy", "--device", "nosuch"], "--device 'nosuch' is not a device"),
    ("sample", ["sample", "--backbone", "toy", "--device", "cuda:99"], "--device cuda:99: "),
    ("sample", ["sample", "--backbone", "toy", "--head-dtype", "nope"], "argument --head-dtype: invalid choice"),
    ("sample", ["sample", "--backbone", "toy", "--out"], "argument --out: expected one argument"),
    ("train", ["train", "nothing"], "argument what: invalid choice: 'nothing'"),
    ("train", ["train", "backbone", "--preset", "nosuch"], "unknown backbone training preset 'nosuch'"),
    ("train", ["train", "tokenizer", "--steps", "1", "--run-dir", "{file}"], "--run-dir {file} is a file"),
    ("train", ["train", "tokenizer", "--steps", "1", "--run-dir", f"{UNWRITABLE}/run"], "--run-dir"),
    ("fit", ["fit", "nosuch"], "unknown method 'nosuch'"),
    ("fit", ["fit", "maskgit"], "method 'maskgit' has nothing to train"),
    ("fit", ["fit", "token_critic", "--backbone", "nosuch"], "unknown backbone 'nosuch'"),
    ("fit", ["fit", "token_critic", "--set", "nosuch=1"], "unknown knob fit token_critic.nosuch"),
    ("fit", ["fit", "token_critic", "--set", "steps=abc"], "fit token_critic.steps: cannot read 'abc' as int"),
    ("fit", ["fit", "token_critic", "--set", "lr=0"], "fit token_critic.lr must be positive, got 0.0"),
    ("fit", ["fit", "token_critic", "--set", "lr=-1"], "fit token_critic.lr must be positive, got -1.0"),
    ("fit", ["fit", "token_critic", "--set", "lr=inf"], "fit token_critic.lr = 'inf': a float knob must be a finite"),
    ("fit", ["fit", "token_critic", "--backbone", "toy", "--run-dir", "{file}"], "--run-dir {file} is a file"),
    ("fit", ["fit", "token_critic", "--backbone", "toy"], "stack toy has no token maps"),
    ("diagnose", ["diagnose", "nosuch"], "unknown method 'nosuch'"),
    ("diagnose", ["diagnose", "maskgit"], "method 'maskgit' has no diagnostics"),
    ("diagnose", ["diagnose", "ka_mig", "--maps", "-1"], "argument --maps: must be >= 1, got -1"),
    ("diagnose", ["diagnose", "ka_mig", "--out", "{file}/x.md"], "--out {file} is a file"),
    pytest.param("diagnose", ["diagnose", "ka_mig", "--maps", "10001"], "--maps 10001: the test split of stack fmnist holds",
                 marks=pytest.mark.slow),  # encodes the test split's token maps into a fresh cache first
    ("report", ["report", "nosuch", "--reports", "{reports}"], "no suite 'nosuch'"),
    ("sweep", ["sweep", "{file}"], "no suite '{file}'"),
    ("sweep", ["sweep", "{pngempty}"], "no suite '{pngempty}'"),
    ("demo", ["demo", "--suite", "nosuch"], "no suite 'nosuch'"),
    ("migbench", ["info", "extra"], "unrecognized arguments: extra"),
    ("migbench", ["regress", "--update", "extra"], "unrecognized arguments: extra"),
]


@pytest.mark.parametrize(("command", "argv", "fragment"), INPUT_CASES)
def test_bad_input_is_one_line(command: str, argv: list[str], fragment: str, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str], no_work: None,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each input file of each kind, each option of each command: one line, exit 2, nothing left."""
    monkeypatch.setenv("MIGBENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MIGBENCH_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    names = {**input_files(work), "reports": work / "reports"}
    before = tree(work)
    argv = [a.format(**names) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    prefix = "migbench: error: " if command == "migbench" else f"migbench {command}: "
    assert len(err) == 1 and err[0].startswith(prefix), err
    assert fragment.format(**names) in err[0], err
    assert tree(work) == before


SWEEP_SUITES = [
    ('reference = "fmnist-trian"\n', "suite s: reference 'fmnist-trian': unknown reference"),
    ('reference = "{missing}"\n', "suite s: reference {missing}: no such file"),
    ('extractor = "nope"\n', "unknown feature extractor 'nope'"),
    ("n = 1_000_000_000_000_000\n", "suite s: n = 1,000,000,000,000,000 samples: their labels alone need"),
    ("seeds = [-1]\n", "seeds must be >= 0, got [-1]"),
    ("n = 16.5\n", "n must be int, got 16.5"),
    ("batch_size = 0\n", "batch_size >= 1"),
    ("seeds = []\n", "at least one seed"),
    ('backbone = "nosuch"\n', "unknown backbone 'nosuch'"),
    ('precision = "fp8"\n', "precision must be one of auto, bf16, fp16, fp32, got 'fp8'"),
    ('backbone = "toy\n', "s.toml: Illegal character"),
    ('unknown = 1\n', "unknown key 'unknown'"),
    ('set = { "maskgit.steps" = "abc" }\n', "maskgit.steps: cannot read 'abc' as int"),
    ('set = { "maskgit.cfg_scale" = inf }\n', "maskgit.cfg_scale = inf"),
    ('preset = "valeo"\n', "unknown preset 'valeo' (did you mean 'valeoai'?); known: valeoai"),
    ('preset = ["valeoai"]\n', "preset must be str, got ['valeoai']"),
]


@pytest.mark.parametrize(("top", "fragment"), SWEEP_SUITES)
def test_bad_suite_is_one_line_before_any_work(top: str, fragment: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str], no_work: None) -> None:
    """A suite file with a bad value: `migbench sweep` says so in one line and makes no results folder."""
    work = tmp_path / "work"
    work.mkdir()
    names = {"missing": work / "missing.npz"}
    key = top.split("=")[0].strip()
    body = "".join(line for line in ('backbone = "toy"\n', "n = 16\n") if not line.startswith(key + " "))
    body += top.replace("{missing}", str(names["missing"]))
    suite = work / "s.toml"
    suite.write_text(body + '[[runs]]\nlabel = "a"\nmethods = ["maskgit"]\n')
    assert cli.main(["sweep", str(suite), "--results", str(work / "results")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("migbench sweep: error: "), err
    assert fragment.format(**names) in err[0], err
    assert not (work / "results").exists()


BAD_RUNS = [
    ('[[runs]]\nmethods = ["maskgit"]\n', "runs[0].label must be str, got None"),
    ('[[runs]]\nlabel = "a"\nmethods = "maskgit"\n', "runs[0].methods must be list, got 'maskgit'"),
    ('[[runs]]\nlabel = "a"\nprecision = "fp8"\n', "runs[0].precision must be one of"),
    ('[[runs]]\nlabel = "a"\n[[runs]]\nlabel = "a"\n', "label 'a' used twice"),
    ('[[runs]]\nlabel = "a"\ngrid = { "maskgit.steps" = 8 }\n', "grid.maskgit.steps must be list, got 8"),
    ("", "no [[runs]]"),
    ('[[runs]]\nlabel = "a"\npreset = "nosuch"\n', "runs[0] (a): unknown preset 'nosuch'; known: valeoai"),
    ('[[runs]]\nlabel = "a"\npreset = 1\n', "runs[0].preset must be str, got 1"),
]


@pytest.mark.parametrize(("runs", "fragment"), BAD_RUNS)
def test_bad_run_of_a_suite_is_one_line(runs: str, fragment: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str], no_work: None) -> None:
    suite = tmp_path / "s.toml"
    suite.write_text('backbone = "toy"\nn = 16\n' + runs)
    assert cli.main(["sweep", str(suite), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "results").exists()


GOOD_CASES = [
    ["--batch-size", str(10**11)],  # larger than n: one batch of n
    ["--classes", "-1"],  # -1 is the unconditional class
    ["--seed", str(10**20)],  # any whole number >= 0 is a seed
]


@pytest.mark.parametrize("extra", GOOD_CASES)
def test_extreme_but_valid_option_gives_a_result(extra: list[str], tmp_path: Path) -> None:
    assert cli.main(["sample", "--backbone", "toy", "--n", "10", *extra, "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["grid.png", "meta.json", "samples.npz"]
