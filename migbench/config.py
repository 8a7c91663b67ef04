"""Method configs: frozen dataclasses with documented knobs, strict overrides, run and content hashes."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

import numpy as np


def knob(default: Any, help: str, choices: tuple[Any, ...] | None = None, *, described_at_default: bool = True) -> Any:
    """A config field with its documentation (shown by `migbench info`) and allowed values.

    ``described_at_default=False`` leaves the knob out of :func:`describe_config` (hence out of
    a recipe's description and its run hash) while it holds its default: a knob added after
    results were committed, whose default is the earlier behaviour, keeps their hashes current."""
    kwargs: dict[str, Any] = {"metadata": {"help": help, "choices": choices,
                                           "described_at_default": described_at_default}}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults")
    return dataclasses.field(default=default, **kwargs)


def check_choices(config: Any) -> None:
    """Raise ValueError when a field with ``choices`` holds another value."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        if choices is not None and value not in choices:
            raise ValueError(f"{type(config).__name__}.{f.name} = {value!r}; choose from {list(choices)}")


AUTO = "auto"  # a trained method's weights knob left to the stack (Recipe.bind resolves it)
RANDOM_PARTS = "random"  # a trained method's seeded random parts (random_parts(stack)): random-weights stacks name it

MAX_LOGIT_SCALE = 1e3
"""Largest factor a method may multiply logits by (a temperature of at least 1 / this).

The backbone's logits are log-probabilities over K codes, tens of nats apart at most; scaled by
1e3 they stay below about 1e5, exact in fp32 and far from bf16/fp16 overflow, and a softmax
temperature of 1e-3 already turns sampling into argmax (a 0.01 nat gap becomes 10 nats). Larger
factors add nothing, and factors near 1 / 1e-45 overflow to inf, whose softmax is NaN.
"""


def check_bounds(config: Any, prefix: str, *, at_least_one: tuple[str, ...] = (), positive: tuple[str, ...] = (),
                 non_negative: tuple[str, ...] = ()) -> None:
    """Raise ValueError ``prefix.knob must be ...`` for the first named field of ``config`` out of
    its range: counts >= 1, positive numbers, numbers >= 0."""
    rules = ([(n, lambda v: v >= 1, ">= 1") for n in at_least_one] + [(n, lambda v: v > 0, "positive") for n in positive]
             + [(n, lambda v: v >= 0, ">= 0") for n in non_negative])
    for name, holds, wanted in rules:
        value = getattr(config, name)
        if not holds(value):
            raise ValueError(f"{prefix}.{name} must be {wanted}, got {value}")


def check_logit_scale(where: str, value: float, scale: float) -> None:
    """Raise ValueError unless the logit factor ``scale`` from knob ``where`` = ``value`` lies in
    (0, :data:`MAX_LOGIT_SCALE`]."""
    if not 0.0 < scale <= MAX_LOGIT_SCALE:
        raise ValueError(f"{where} = {value!r} scales logits by {scale:g}; the factor must lie in "
                         f"(0, {MAX_LOGIT_SCALE:g}]")


def check_guidance_scale(where: str, value: float) -> None:
    """Raise ValueError unless the guidance scale s of knob ``where`` keeps the guided logits
    (1 + s) l - s l_ref within :data:`MAX_LOGIT_SCALE` times the logits: |s| <= MAX_LOGIT_SCALE - 1
    (negative scales are legal: they guide away from the condition)."""
    if abs(value) > MAX_LOGIT_SCALE - 1:
        raise ValueError(f"{where} = {value!r} scales logits by {abs(value) + 1:g}; |{where}| must be at most "
                         f"{MAX_LOGIT_SCALE - 1:g}")


def closest(name: str, options: list[str]) -> str:
    """' (did you mean X?)' for the closest option, or ''."""
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert ``value`` (possibly a CLI string) to the field type ``annotation``.

    Float knobs (and the items of tuple-of-float knobs) must be finite: NaN or +-inf, which a CLI
    string and TOML can both spell, would run and give meaningless samples, so they are refused.
    """
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return _coerce(value, args[0], where)
    if origin is tuple:
        item = typing.get_args(annotation)[0]
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        return tuple(_coerce(v, item, where) for v in value)
    if annotation is float:
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError) as err:
            raise ValueError(f"{where}: cannot read {value!r} as float") from err
        if not math.isfinite(number):
            raise ValueError(f"{where} = {value!r}: a float knob must be a finite number")
        return number
    try:
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if annotation is str:
            return str(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: cannot read {value!r} as {annotation.__name__}") from err
    return value


def apply_overrides(config: Any, overrides: dict[str, Any], prefix: str) -> Any:
    """A copy of ``config`` with ``overrides`` (field -> value) applied and checked."""
    hints = typing.get_type_hints(type(config))
    names = [f.name for f in dataclasses.fields(config)]
    changes = {}
    for key, value in overrides.items():
        if key not in names:
            raise KeyError(f"unknown knob {prefix}.{key}{closest(key, names)}; "
                           f"knobs of {prefix}: {', '.join(names)}")
        changes[key] = _coerce(value, hints[key], f"{prefix}.{key}")
    new = dataclasses.replace(config, **changes)
    check_choices(new)
    return new


def describe_config(config: Any) -> dict[str, Any]:
    """Every knob of ``config`` by name, except those declared ``described_at_default=False``
    (:func:`knob`) while they hold their default."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.metadata.get("described_at_default", True) or getattr(config, f.name) != f.default}


def describe_knobs(config_cls: type) -> list[dict[str, Any]]:
    """Name, type, default, choices and help of every knob of a config class."""
    hints = typing.get_type_hints(config_cls)
    rows = []
    for f in dataclasses.fields(config_cls):
        annotation = hints[f.name]
        rows.append({"knob": f.name, "type": getattr(annotation, "__name__", str(annotation)),
                     "default": f.default, "choices": f.metadata.get("choices"),
                     "help": f.metadata.get("help", "")})
    return rows


def stable_hash(obj: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of ``obj`` (dataclasses and tuples flattened)."""
    def plain(x: Any) -> Any:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return {k: plain(v) for k, v in dataclasses.asdict(x).items()}
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x
    text = json.dumps(plain(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def content_hash(arrays: np.ndarray | Mapping[str, Any]) -> str:
    """sha256 (hex) of array contents, never of names alone.

    One numpy array (the evaluator's reference images): over its shape, then its C-order bytes.
    Named arrays, numpy or torch (KA-MIG's graph tensors): over each array's name, shape and
    dtype, then its bytes, in name order. Both spellings are those the committed hashes
    (reference caches, graph manifest entries) were made with."""
    if isinstance(arrays, np.ndarray):
        parts = [(str(arrays.shape), arrays)]
    else:
        parts = [(f"{name}{tuple(arrays[name].shape)}{arrays[name].dtype}", arrays[name]) for name in sorted(arrays)]
    digest = hashlib.sha256()
    for header, array in parts:
        digest.update(header.encode())
        host = array if isinstance(array, np.ndarray) else array.detach().cpu().numpy()
        digest.update(np.ascontiguousarray(host).tobytes())
    return digest.hexdigest()
