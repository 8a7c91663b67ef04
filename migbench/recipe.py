"""A recipe: a methods list with each method's resolved config; builds samplers.

Methods are given as a list (``["ka_mig", "self_guidance"]``); the base ``maskgit`` is always
installed first. Overrides are dotted keys ``method.knob`` (``maskgit.steps=12``); an unknown
method or knob is an error that names the closest valid key. A preset (the base method's
``presets``, e.g. ``valeoai``) is a named bundle of such overrides, expanded by
:func:`expand_preset` before the recipe is resolved, so a run's hash is that of its knob values.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from migbench import registry
from migbench.api import Stack
from migbench.config import AUTO, apply_overrides, closest, describe_config
from migbench.sampler import Sampler, SamplerBuilder

BASE = "maskgit"


@dataclass(frozen=True)
class Recipe:
    """Ordered method names (base first) and their configs."""

    methods: tuple[str, ...]
    configs: tuple[Any, ...]

    def config(self, name: str) -> Any:
        return self.configs[self.methods.index(name)]

    def describe(self) -> dict[str, Any]:
        """JSON-able resolved recipe: methods and every knob's value (a knob added with
        ``described_at_default=False`` only when it differs from its default: :func:`describe_config`)."""
        return {"methods": list(self.methods),
                "configs": {n: _plain(describe_config(c)) for n, c in zip(self.methods, self.configs, strict=True)}}

    def label(self) -> str:
        extra = [m for m in self.methods if m != BASE]
        return "+".join(extra) if extra else BASE

    def bind(self, stack: Stack) -> Recipe:
        """This recipe on ``stack``: every knob left at ``"auto"`` (a trained method's weights)
        for which the stack names weights takes the name ``stack.method_weights[method][knob]``
        (one the stack does not name stays ``"auto"``, and the method refuses it when it installs,
        :meth:`SamplerBuilder.weights_name`); every method's ``requires(config)`` is checked
        against the stack's capabilities, failing with one line naming the method and the stack."""
        configs = []
        for name, config in zip(self.methods, self.configs, strict=True):
            stack.require(name, tuple(getattr(registry.method(name), "requires", lambda _: ())(config)))
            known = stack.method_weights.get(name, {})
            auto = {f.name: known[f.name] for f in dataclasses.fields(config)
                    if getattr(config, f.name) == AUTO and f.name in known}
            configs.append(dataclasses.replace(config, **auto))
        return Recipe(self.methods, tuple(configs))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def parse_methods(spec: str | Sequence[str]) -> list[str]:
    """'a,b' or ['a', 'b'] -> ['a', 'b'] (empty entries dropped)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [m.strip() for m in items if m.strip()]


def presets() -> dict[str, dict[str, Any]]:
    """The named presets: the base method's ``presets`` table (name -> dotted overrides)."""
    return dict(getattr(registry.method(BASE), "presets", {}))


def expand_preset(preset: str | None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``overrides`` on top of preset ``preset``'s overrides (explicit overrides win); None
    expands to ``overrides`` alone. An unknown preset is a KeyError naming the known ones."""
    if preset is None:
        return dict(overrides or {})
    known = presets()
    if preset not in known:
        raise KeyError(f"unknown preset {preset!r}{closest(preset, list(known))}; known: {', '.join(known)}")
    return {**known[preset], **(overrides or {})}


def resolve(methods: str | Sequence[str], overrides: Mapping[str, Any] | None = None,
            neutral: Sequence[str] = ()) -> Recipe:
    """Resolve a methods list and dotted overrides into a :class:`Recipe`.

    ``neutral`` names methods to start from their neutral config instead of their defaults.
    """
    names = parse_methods(methods)
    if len(set(names)) != len(names):
        raise ValueError(f"a method is listed twice in {names}")
    for name in names:
        registry.method(name)  # unknown names fail here with a suggestion
    ordered = [BASE, *[n for n in names if n != BASE]]
    grouped: dict[str, dict[str, Any]] = {n: {} for n in ordered}
    for key, value in (overrides or {}).items():
        prefix, _, knob_name = key.partition(".")
        if not knob_name:
            raise KeyError(f"override {key!r} must be written method.knob (e.g. maskgit.steps)")
        if prefix not in grouped:
            hint = closest(prefix, list(grouped))
            raise KeyError(f"override {key!r} names method {prefix!r}, which is not in the methods "
                           f"list {ordered}{hint}")
        grouped[prefix][knob_name] = value
    configs = []
    for name in ordered:
        cls = registry.method(name)
        start = cls.neutral_config() if name in neutral else cls.config_cls()
        configs.append(apply_overrides(start, grouped[name], name))
    return Recipe(tuple(ordered), tuple(configs))


def build_sampler(recipe: Recipe, stack: Stack) -> Sampler:
    """Install every method of ``recipe`` (bound to ``stack``: :meth:`Recipe.bind`) in order on
    the stack's backbone.

    Warns when a base knob was changed for a slot that another method took over (for example
    ``maskgit.steps`` with ``halton``, whose own ``halton.steps`` applies).
    """
    recipe = recipe.bind(stack)
    builder = SamplerBuilder(stack)
    for name, config in zip(recipe.methods, recipe.configs, strict=True):
        registry.method(name).install(builder, config)
    base = registry.method(BASE)
    defaults = base.config_cls()
    for slot, knobs in base.slot_knobs.items():
        owner = builder.owner(slot)
        changed = [k for k in knobs if getattr(recipe.config(BASE), k) != getattr(defaults, k)]
        if owner != BASE and changed:
            warnings.warn(f"{', '.join(f'{BASE}.{k}' for k in changed)} has no effect: the {slot} slot "
                          f"belongs to {owner!r} (set its own knobs instead)", stacklevel=2)
    return builder.build()


def parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    """['a.b=1', ...] -> {'a.b': '1'}; values stay strings until a config coerces them."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out
