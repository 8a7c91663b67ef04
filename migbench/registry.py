"""Literal name -> "module:attr" tables, imported lazily (listing loads no method code)."""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any

from migbench.config import closest

if TYPE_CHECKING:
    from migbench.checkpoints import CheckpointSpec

METHODS: dict[str, str] = {
    "maskgit": "migbench.methods.maskgit:MaskGIT",
    "halton": "migbench.methods.halton:Halton",
    "emigm": "migbench.methods.emigm:EMIGM",
    "cfg_interval": "migbench.methods.emigm:CFGInterval",
    "token_critic": "migbench.methods.token_critic:TokenCriticMethod",
    "self_guidance": "migbench.methods.self_guidance:SelfGuidance",
    "ka_mig": "migbench.methods.ka_mig:KAMIG",
}

BACKBONES: dict[str, str] = {
    "fmnist": "migbench.backbones.fmnist:fmnist",
    "fmnist_emigm": "migbench.backbones.fmnist:fmnist_emigm",
    "toy": "migbench.backbones.toy:toy",
    "toy1d": "migbench.backbones.toy1d:toy1d",
    "valeoai_maskgit_256": "migbench.backbones.valeoai:valeoai_maskgit_256",
    "valeoai_maskgit_512": "migbench.backbones.valeoai:valeoai_maskgit_512",
    "valeoai_tiny": "migbench.backbones.valeoai:valeoai_tiny",
    "autonat_l": "migbench.backbones.autonat:autonat_l",
    "autonat_l_kamig": "migbench.backbones.autonat:autonat_l_kamig",
    "autonat_tiny": "migbench.backbones.autonat:autonat_tiny",
    "maskgit_256": "migbench.backbones.openmuse:maskgit_256",
    "maskgit_512": "migbench.backbones.openmuse:maskgit_512",
    "openmuse_tiny": "migbench.backbones.openmuse:openmuse_tiny",
    "titok_l32": "migbench.backbones.titok:titok_l32",
    "titok_b64": "migbench.backbones.titok:titok_b64",
    "titok_s128": "migbench.backbones.titok:titok_s128",
    "titok_tiny": "migbench.backbones.titok:titok_tiny",
}

# Known public checkpoint files: family (or method with released parts) -> "module:attr" of its
# tuple of CheckpointSpec.
CHECKPOINT_TABLES: dict[str, str] = {
    "valeoai": "migbench.backbones.valeoai:CHECKPOINTS",
    "autonat": "migbench.backbones.autonat:CHECKPOINTS",
    "ka_mig": "migbench.methods.ka_mig.release:CHECKPOINTS",
    "openmuse": "migbench.backbones.openmuse:CHECKPOINTS",
    "titok": "migbench.backbones.titok:CHECKPOINTS",
    "self_guidance": "migbench.methods.self_guidance.release:CHECKPOINTS",
}

# `migbench` sub-commands that live above the core (the harness and the families' trainers).
COMMANDS: dict[str, str] = {
    "data": "migbench.benchmarks.commands:data_command",
    "train": "migbench.benchmarks.commands:train_command",
    "eval": "migbench.benchmarks.commands:eval_command",
    "floors": "migbench.benchmarks.commands:floors_command",
    "sweep": "migbench.benchmarks.commands:sweep_command",
    "report": "migbench.benchmarks.commands:report_command",
    "demo": "migbench.benchmarks.commands:demo_command",
    "regress": "migbench.benchmarks.commands:regress_command",
}


def _load(table: dict[str, str], kind: str, name: str) -> Any:
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}{closest(name, list(table))}; known: {', '.join(table)}")
    module, attr = table[name].split(":")
    return getattr(importlib.import_module(module), attr)


def method(name: str) -> Any:
    """The method class registered as ``name``."""
    return _load(METHODS, "method", name)


def backbone(name: str) -> Any:
    """The stack factory registered as ``name`` (call it to load the stack)."""
    return _load(BACKBONES, "backbone", name)


def checkpoints() -> dict[str, CheckpointSpec]:
    """Every known public checkpoint file by name (``CheckpointSpec``), over all families."""
    found: dict[str, Any] = {}
    for family in CHECKPOINT_TABLES:
        for spec in _load(CHECKPOINT_TABLES, "checkpoint table", family):
            found[spec.name] = spec
    return found


def checkpoint(name: str) -> CheckpointSpec:
    """The ``CheckpointSpec`` of the known file ``name``."""
    known = checkpoints()
    if name not in known:
        raise KeyError(f"unknown checkpoint {name!r}{closest(name, list(known))}; known: {', '.join(known)}")
    return known[name]


def has_random_weights(name: str) -> bool:
    """Whether stack ``name`` has a random-weights mode: a public-checkpoint stack at full size
    (the others are committed or random already)."""
    return "random_weights" in inspect.signature(backbone(name)).parameters


def stack(name: str, random_weights: bool = False) -> Any:
    """Load the stack ``name``; ``random_weights`` builds a public-checkpoint stack with seeded
    random weights instead of its files (refused for stacks without that mode)."""
    factory = backbone(name)
    if not random_weights:
        return factory()
    if not has_random_weights(name):
        raise ValueError(f"stack {name} has no random-weights mode (its weights are committed or it is random already)")
    return factory(random_weights=True)


def command(name: str) -> Any:
    """The function of the `migbench` sub-command ``name``."""
    return _load(COMMANDS, "command", name)
