"""The wheel holds every sub-package under migbench.*, and nothing at a generic top level."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from migbench import registry
from migbench.paths import repo_root

ROOT = repo_root()
FOLDERS = {"migbench": "migbench", "methods": "migbench/methods", "backbones": "migbench/backbones",
           "benchmarks": "migbench/benchmarks"}


def expected_packages() -> set[str]:
    found = set()
    for folder, target in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(str(Path(target) / rel) if str(rel) != "." else target)
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True)
    return zipfile.ZipFile(next(out.glob("migbench-*.whl")))


def test_wheel_contains_every_sub_package(wheel) -> None:
    names = set(wheel.namelist())
    missing = [p for p in expected_packages() if f"{p}/__init__.py" not in names]
    assert not missing
    tops = {n.split("/")[0] for n in names if not n.startswith("migbench-")}
    assert tops == {"migbench"}


def test_wheel_carries_weights_and_suites(wheel) -> None:
    names = set(wheel.namelist())
    assert "migbench/weights/manifest.json" in names
    assert "migbench/benchmarks/suites/fmnist_quick.toml" in names


def test_every_method_module_is_registered() -> None:
    modules = {p.stem for p in (ROOT / "methods").glob("*.py") if p.stem != "__init__"}
    modules |= {p.name for p in (ROOT / "methods").iterdir() if (p / "__init__.py").exists()}
    registered = {target.split(":")[0].split(".")[2] for target in registry.METHODS.values()}
    assert modules == registered
    for name in registry.METHODS:
        registry.method(name)
    for name in registry.BACKBONES:
        registry.backbone(name)


def test_no_bare_imports_of_mapped_folders() -> None:
    for path in ROOT.glob("**/*.py"):
        if ".venv" in path.parts:
            continue
        for line in path.read_text().splitlines():
            stripped = line.strip()
            for bare in ("methods", "backbones", "benchmarks"):
                assert not stripped.startswith((f"import {bare}", f"from {bare}")), f"{path}: {line}"
