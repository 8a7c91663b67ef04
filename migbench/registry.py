"""Literal name -> "module:attr" tables, imported lazily (listing loads no method code)."""

from __future__ import annotations

import importlib
from typing import Any

from migbench.config import closest

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


def command(name: str) -> Any:
    """The function of the `migbench` sub-command ``name``."""
    return _load(COMMANDS, "command", name)
