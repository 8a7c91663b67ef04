"""Where migbench keeps its files: the committed weights folder and the local cache."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def weights_dir() -> Path:
    """The committed weights folder (``migbench/weights``), or ``MIGBENCH_WEIGHTS`` if set."""
    override = os.environ.get("MIGBENCH_WEIGHTS")
    return Path(override) if override else PACKAGE_DIR / "weights"


def cache_dir() -> Path:
    """Local cache (token maps, reference statistics): ``MIGBENCH_CACHE`` or ~/.cache/migbench."""
    override = os.environ.get("MIGBENCH_CACHE")
    base = Path(override) if override else Path.home() / ".cache" / "migbench"
    base.mkdir(parents=True, exist_ok=True)
    return base


def repo_root() -> Path:
    """The checkout holding this package (results/ and reports/ live here)."""
    return PACKAGE_DIR.parent
