"""How the public families make their stacks: modules built under a fixed seed, the imported
checkpoint files loaded strictly (checked for before anything is built) or seeded random
weights, ImageNet with the tokenizer's token maps as the data."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from migbench.backbones.common.imagenet_tokens import imagenet_with_tokens
from torch import nn

from migbench.api import Stack
from migbench.checkpoints import load_state, load_strict, record

StateMap = Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]


def _built(build: Callable[[], tuple[nn.Module, nn.Module]], seed: int) -> tuple[nn.Module, nn.Module]:
    """(tokenizer, backbone) of ``build`` under ``seed``, the global generator left untouched."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def _stack(name: str, tokenizer: nn.Module, backbone: nn.Module, size: int, num_classes: int,
           hashes: dict[str, str], method_weights: Mapping[str, Mapping[str, str]]) -> Stack:
    return Stack(name=name, tokenizer=tokenizer.eval().requires_grad_(False),
                 backbone=backbone.eval().requires_grad_(False),
                 dataset=imagenet_with_tokens(tokenizer, size, num_classes), weight_hashes=hashes,
                 method_weights=dict(method_weights))


def checkpoint_stack(name: str, build: Callable[[], tuple[nn.Module, nn.Module]], size: int,
                     files: tuple[str, str], random_weights: bool, seed: int = 0,
                     method_weights: Mapping[str, Mapping[str, str]] | None = None,
                     tokenizer_state: StateMap = dict) -> Stack:
    """The stack ``name`` at ``size`` px: ``build()`` gives (tokenizer, backbone) at full size;
    ``files`` are the (backbone, tokenizer) checkpoint names, loaded strictly (the tokenizer's
    state through ``tokenizer_state``, a rename-only map) with both sha256s of each in the weight
    hashes, or with ``random_weights`` seeded random weights recorded as ``random-seed<seed>``."""
    if not random_weights:
        for needed in files:
            record(needed)  # not imported: fail now, naming both routes, not after building the modules
    tokenizer, backbone = _built(build, seed)
    hashes: dict[str, Any] = {}
    for module, file, convert in ((backbone, files[0], dict), (tokenizer, files[1], tokenizer_state)):
        if random_weights:
            hashes[file] = f"random-seed{seed}"
            continue
        state, entry = load_state(file)
        load_strict(module, convert(state), file)
        hashes[file], hashes[f"{file}.safetensors"] = entry["source_sha256"], entry["sha256"]
    return _stack(name, tokenizer, backbone, size, 1000, hashes, method_weights or {})


def tiny_stack(name: str, build: Callable[[], tuple[nn.Module, nn.Module]], size: int, seed: int = 0) -> Stack:
    """A family's tiny random stack (contract tests): ``build()`` under ``seed``, ImageNet's first
    classes (as many as the backbone has) at ``size`` px."""
    tokenizer, backbone = _built(build, seed)
    return _stack(name, tokenizer, backbone, size, backbone.layout.num_classes, {name: f"random-seed{seed}"}, {})
