"""The core never imports a family, a method or the harness: only the registry names them, as strings.

setup.py maps ``migbench.backbones``, ``migbench.methods`` and ``migbench.benchmarks`` onto the
folders beside ``migbench/``, so a path-based import graph would not see such an import; this
test reads every import statement of the core, including the lazy ones inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

CORE = Path(__file__).resolve().parents[1] / "migbench"
UPPER = ("migbench.backbones", "migbench.methods", "migbench.benchmarks", "backbones", "methods", "benchmarks")


def imported_names(path: Path) -> list[str]:
    """Every module named by an import statement of ``path`` (``from migbench import methods`` too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: p.name)
def test_core_imports_no_family_method_or_harness(path: Path) -> None:
    upward = [name for name in imported_names(path) if name.startswith(UPPER)]
    assert not upward, f"{path.name} imports {upward}"


def test_only_the_registry_names_them() -> None:
    """The acceptance grep: ``migbench.(backbones|methods|benchmarks)`` appears in the core only as
    the registry's "module:attr" strings."""
    hits = [(p.name, line.strip()) for p in CORE.rglob("*.py")
            for line in p.read_text(encoding="utf-8").splitlines()
            if any(f"migbench.{layer}" in line for layer in ("backbones", "methods", "benchmarks"))]
    assert hits and all(name == "registry.py" and line.startswith('"') and ':' in line for name, line in hits), hits


def test_registry_entries_resolve() -> None:
    """Every registered string names an importable attribute of the right kind."""
    from migbench import registry
    from migbench.api import Stack

    for name in registry.METHODS:
        assert callable(getattr(registry.method(name), "install", None)), name
    for name in registry.BACKBONES:
        factory = registry.backbone(name)
        assert callable(factory) and factory.__annotations__.get("return") in (Stack, "Stack"), name
    for name in registry.COMMANDS:
        assert callable(registry.command(name)), name


def test_every_family_folder_is_registered_and_makes_a_stack() -> None:
    """A family is a folder of ``backbones/`` plus registry lines: every folder is named by at
    least one entry, every entry points into a folder, and each factory returns a Stack."""
    from migbench import registry
    from migbench.api import Stack

    # common/ holds pieces shared by the public families (ImageNet's data description and reader):
    # not a family, so no stack and no registry line
    shared = {"common"}
    folders = {p.name for p in (CORE.parent / "backbones").iterdir() if (p / "__init__.py").is_file()} - shared
    families = {entry.split(":")[0].split(".")[2] for entry in registry.BACKBONES.values()}
    assert folders == families, f"folders without a registry line: {folders - families}; entries without a folder: {families - folders}"
    for name in registry.BACKBONES:
        if registry.has_random_weights(name):
            with torch.device("meta"):  # a public-checkpoint stack at full size: built, never allocated
                stack = registry.stack(name, random_weights=True)
        else:
            stack = registry.backbone(name)()
        assert isinstance(stack, Stack) and stack.name == name, name
