"""Suites: TOML files that say what to sweep. Strict: an unknown key fails with a suggestion.

    name = "fmnist_quick"            # defaults to the file name
    description = "..."
    backbone = "fmnist"              # a registered backbone (a run may override it)
    n = 1000                         # samples per point
    seeds = [0]                      # one point per seed; several seeds give 95% intervals
    reference = "fmnist-train"       # default: the backbone's data's reference
    extractor = "fmnist-classifier"  # default: the backbone's data's feature extractor
    image_normalisation = "none"     # none | minmax (valeoai's per-image min-max, samples and reference)
    batch_size = 250
    precision = "auto"               # auto | bf16 | fp16 | fp32 (a run may override it)
    head_dtype = "auto"              # auto | fp32: the output head in fp32 under bf16/fp16 autocast
    preset = "valeoai"               # a named bundle of overrides (`migbench info`); a run may override it
    set = { "maskgit.steps" = 8 }    # overrides for every run

    [[runs]]
    label = "maskgit"                # one line per label in the FID-IS plot
    methods = ["maskgit"]
    set = { "maskgit.cfg_scale" = 0.0 }
    grid = { "maskgit.choice_temperature" = [1.0, 2.0, 4.5] }   # Cartesian product of all keys

A point's overrides are its preset's (the run's, else the suite's), then the suite's ``set``,
the run's ``set`` and its grid values, later ones winning; the preset is expanded here, so a
point's run hash and recorded ``overrides`` are those of its knob values. Every point's knobs
are checked against the method configs when the suite is loaded, so a typo fails before any
sampling starts.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from migbench.benchmarks.metrics.evaluate import MIN_SAMPLES, NORMALISATIONS

from migbench import registry
from migbench.api import Stack
from migbench.config import closest
from migbench.precision import HEAD_DTYPES, PRECISIONS
from migbench.recipe import Recipe, expand_preset, resolve

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SUITES_DIR = Path(__file__).resolve().parent / "suites"
TOP_KEYS = ("name", "description", "backbone", "n", "seeds", "reference", "extractor", "image_normalisation",
            "batch_size", "precision", "head_dtype", "preset", "set", "runs")
RUN_KEYS = ("label", "methods", "preset", "set", "grid", "backbone", "precision", "head_dtype")


class SuiteError(ValueError):
    """A suite file that cannot be run as written."""


@dataclass(frozen=True)
class Point:
    """One sweep point: a recipe on a backbone at one seed, and the grid values that made it."""

    label: str
    backbone: str
    recipe: Recipe
    swept: tuple[tuple[str, Any], ...]
    overrides: tuple[tuple[str, Any], ...]
    seed: int
    precision: str = "auto"  # as declared; the sweep resolves it for its device
    head_dtype: str = "auto"


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    backbone: str
    n: int
    seeds: tuple[int, ...]
    reference: str | None  # None until :func:`bind` takes the backbone data's default
    batch_size: int
    points: tuple[Point, ...] = field(repr=False)
    path: Path | None = None
    extractor: str | None = None  # as ``reference``
    image_normalisation: str = "none"  # NORMALISATIONS of the evaluator; enters run hashes when not "none"
    bound: bool = False  # True once :func:`bind` resolved recipes and evaluation on the stacks
    random_weights: bool = False  # public-checkpoint stacks with seeded random weights (`sweep --random-weights`)


def bind(suite: Suite, stacks: dict[str, Stack] | None = None) -> Suite:
    """``suite`` on its stacks (loaded once into the cache ``stacks``): every point's recipe bound
    to its stack (:meth:`Recipe.bind`: ``"auto"`` weights named, requirements checked) and the
    reference and extractor defaulting to the data of the suite's backbone. A run whose stack
    cannot take its recipe, or whose data differs from the suite's while the suite leaves the
    reference or extractor to the data, fails as a :class:`SuiteError` naming the run."""
    if suite.bound:
        return suite
    stacks = {} if stacks is None else stacks
    for name in dict.fromkeys([suite.backbone, *(p.backbone for p in suite.points)]):
        if name not in stacks:
            try:
                stacks[name] = registry.stack(name, suite.random_weights)
            except ValueError as err:
                raise SuiteError(f"suite {suite.name}: {err.args[0] if err.args else err}") from err
    data = stacks[suite.backbone].dataset
    points = []
    for point in suite.points:
        where = f"run {point.label!r} at {dict(point.swept)} on {point.backbone}"
        other = stacks[point.backbone].dataset
        if other.name != data.name and (suite.reference is None or suite.extractor is None):
            raise SuiteError(f"{where}: its data ({other.name}) is not the suite backbone's ({data.name}); "
                             "set the suite's reference and extractor, or split the suite")
        try:
            points.append(replace(point, recipe=point.recipe.bind(stacks[point.backbone])))
        except ValueError as err:
            raise SuiteError(f"{where}: {err.args[0] if err.args else err}") from err
    return replace(suite, points=tuple(points), reference=suite.reference or data.reference,
                   extractor=suite.extractor or data.extractor, bound=True)


def _check_keys(table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise SuiteError(f"{where}: unknown key {key!r}{closest(key, list(allowed))}; "
                             f"allowed: {', '.join(allowed)}")


def _require(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise SuiteError(f"{where} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _choice(value: Any, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise SuiteError(f"{where} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def suite_path(name_or_path: str) -> Path:
    """A suite by name (``benchmarks/suites/<name>.toml``) or by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.exists():
        return path
    candidate = SUITES_DIR / f"{name_or_path}.toml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in SUITES_DIR.glob("*.toml"))
    raise SuiteError(f"no suite {name_or_path!r}{closest(name_or_path, known)}; known: {', '.join(known)}")


def load_suite(name_or_path: str) -> Suite:
    path = suite_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SuiteError(f"{path}: {err}") from err
    return parse_suite(raw, path)


def for_sweep(name_or_path: str, random_weights: bool = False, n: int | None = None) -> Suite:
    """The suite as `migbench sweep` runs it: ``n`` replaces the suite's sample count and
    ``random_weights`` builds its public-checkpoint stacks with seeded random weights (to try the
    pipeline without the files). Either one renames the suite (``<name>_n<N>``,
    ``<name>_random_weights``), so its rows land in a results folder of their own and never sit
    beside the suite's real numbers; the run hashes differ anyway (N and the weight hashes)."""
    suite = load_suite(name_or_path)
    if n is not None:
        if n < MIN_SAMPLES:
            raise SuiteError(f"--n {n}: need at least {MIN_SAMPLES} (the fewest every metric is computed from)")
        suite = replace(suite, n=n, name=f"{suite.name}_n{n}")
    if random_weights:
        suite = replace(suite, random_weights=True, name=f"{suite.name}_random_weights")
    return suite


def parse_suite(raw: dict[str, Any], path: Path | None = None) -> Suite:
    where = str(path) if path else "suite"
    _check_keys(raw, TOP_KEYS, where)
    name = _require(raw.get("name", path.stem if path else "suite"), str, f"{where}: name")
    backbone = _require(raw.get("backbone", "fmnist"), str, f"{where}: backbone")
    n = _require(raw.get("n", 1000), int, f"{where}: n")
    seeds = tuple(_require(s, int, f"{where}: seeds[]") for s in _require(raw.get("seeds", [0]), list, f"{where}: seeds"))
    batch_size = _require(raw.get("batch_size", 250), int, f"{where}: batch_size")
    if any(seed < 0 for seed in seeds):
        raise SuiteError(f"{where}: seeds must be >= 0, got {list(seeds)}")
    if n < MIN_SAMPLES or batch_size < 1 or not seeds:
        raise SuiteError(f"{where}: need n >= {MIN_SAMPLES} (the fewest every metric is computed from), "
                         "batch_size >= 1 and at least one seed")
    common = _require(raw.get("set", {}), dict, f"{where}: set")
    preset = _optional_str(raw, "preset", where)
    precision = _choice(raw.get("precision", "auto"), PRECISIONS, f"{where}: precision")
    head_dtype = _choice(raw.get("head_dtype", "auto"), HEAD_DTYPES, f"{where}: head_dtype")
    normalisation = _choice(raw.get("image_normalisation", "none"), NORMALISATIONS, f"{where}: image_normalisation")
    runs = _require(raw.get("runs", []), list, f"{where}: runs")
    if not runs:
        raise SuiteError(f"{where}: no [[runs]]")
    points: list[Point] = []
    labels: set[str] = set()
    for i, run in enumerate(runs):
        run_where = f"{where}: runs[{i}]"
        _check_keys(_require(run, dict, run_where), RUN_KEYS, run_where)
        label = _require(run.get("label"), str, f"{run_where}.label")
        if label in labels:
            raise SuiteError(f"{run_where}: label {label!r} used twice")
        labels.add(label)
        methods = _require(run.get("methods", ["maskgit"]), list, f"{run_where}.methods")
        run_backbone = _require(run.get("backbone", backbone), str, f"{run_where}.backbone")
        if run_backbone not in registry.BACKBONES:
            raise SuiteError(f"{run_where}: unknown backbone {run_backbone!r}"
                             f"{closest(run_backbone, list(registry.BACKBONES))}")
        fixed = {**common, **_require(run.get("set", {}), dict, f"{run_where}.set")}
        run_preset = preset if "preset" not in run else _require(run["preset"], str, f"{run_where}.preset")
        run_precision = _choice(run.get("precision", precision), PRECISIONS, f"{run_where}.precision")
        run_head_dtype = _choice(run.get("head_dtype", head_dtype), HEAD_DTYPES, f"{run_where}.head_dtype")
        grid = _require(run.get("grid", {}), dict, f"{run_where}.grid")
        keys = list(grid)
        values = [_require(grid[k], list, f"{run_where}.grid.{k}") for k in keys]
        for combo in itertools.product(*values) if keys else [()]:
            swept = tuple(zip(keys, combo, strict=True))
            try:
                overrides = expand_preset(run_preset, {**fixed, **dict(swept)})
                recipe = resolve(methods, overrides)
            except (KeyError, ValueError) as err:
                raise SuiteError(f"{run_where} ({label}): {err.args[0] if err.args else err}") from err
            for seed in seeds:
                points.append(Point(label, run_backbone, recipe, swept, tuple(sorted(overrides.items())),
                                    seed, run_precision, run_head_dtype))
    return Suite(name=name, description=str(raw.get("description", "")), backbone=backbone, n=n,
                 seeds=seeds, reference=_optional_str(raw, "reference", where),
                 extractor=_optional_str(raw, "extractor", where), image_normalisation=normalisation,
                 batch_size=batch_size, points=tuple(points), path=path)


def _optional_str(raw: dict[str, Any], key: str, where: str) -> str | None:
    return None if key not in raw else _require(raw[key], str, f"{where}: {key}")
