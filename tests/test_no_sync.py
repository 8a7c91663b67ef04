"""No host sync inside a sampling step, for every registered method, family and preset.

The cases: every method recipe on the ``toy`` stack; on every other tiny stack and on a tiny
UViTBert (each family's own forward, hook sites and class slot), the recipes that act inside the
backbone (self-guidance's adapter, KA-MIG's fusion with CFG's two passes); every preset of the
base sampler (the knob values of valeoai, AutoNAT, Unlock-MGM and TiTok) on the ``toy`` stack.
Trained methods use random parts.

On CUDA (``gpu`` marker, skipped without it): one batch of each case runs under
``torch.cuda.set_sync_debug_mode("error")``, after a warm-up batch. On the CPU, a stand-in: no
operator that waits on the device when it runs on CUDA (reading a value to the host, or a shape
that depends on the data) is dispatched inside the sampling loop. The schedule's plan is made
before the loop: eMIGM draws its counts on the host.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from migbench.backbones.titok.uvit_bert import UViTBert, UViTBertConfig
from torch.utils._python_dispatch import TorchDispatchMode

from migbench import registry
from migbench.api import NULL_LABEL, Stack
from migbench.guidance import StepInfo
from migbench.precision import autocast
from migbench.recipe import build_sampler, expand_preset, presets, resolve
from migbench.rng import batch_generator
from migbench.sampler import Sampler

TOY_RECIPES: dict[str, tuple[list[str], dict[str, object]]] = {
    "maskgit+cfg": (["maskgit"], {"maskgit.cfg_scale": 1.0}),
    "halton": (["halton"], {}),
    "halton resample": (["halton"], {"halton.resample_revealed": True}),
    "emigm+cfg_interval": (["emigm", "cfg_interval"], {"maskgit.cfg_scale": 2.0}),
    "token_critic": (["token_critic"], {}),
    "self_guidance": (["self_guidance"], {}),
    "ka_mig": (["ka_mig"], {"maskgit.cfg_scale": 1.0}),
    "ka_mig online": (["ka_mig"], {"ka_mig.precompute": False}),
}
IN_BACKBONE = ("self_guidance", "ka_mig")  # act inside a family's forward; KA-MIG's runs with CFG's passes


def titok_tiny_uvit_bert() -> Stack:
    """``titok_tiny`` with a tiny UViTBert (TiTok-S-128's generator class) in place of its ImageBert."""
    stack = registry.stack("titok_tiny")
    config = dataclasses.replace(UViTBertConfig.tiny(), codebook_size=stack.backbone.layout.codebook_size)
    return dataclasses.replace(stack, backbone=UViTBert(config).eval())


# every registered stack but the full-size public checkpoints (their random weights build in
# minutes) and the Fashion-MNIST ones (the toy stack's backbone class with trained weights), and
# the one generator class no such stack has
STACKS: dict[str, Callable[[], Stack]] = {
    **{name: functools.partial(registry.stack, name) for name in registry.BACKBONES
       if not name.startswith("fmnist") and not registry.has_random_weights(name)},
    "titok_tiny uvit_bert": titok_tiny_uvit_bert,
}

# case id -> (stack, methods, overrides)
CASES: dict[str, tuple[str, list[str], dict[str, object]]] = {
    **{recipe: ("toy", *TOY_RECIPES[recipe]) for recipe in TOY_RECIPES},
    **{f"{family} {recipe}": (family, *TOY_RECIPES[recipe])
       for family in STACKS if family != "toy" for recipe in IN_BACKBONE},
    **{f"preset {preset}": ("toy", ["maskgit"], expand_preset(preset)) for preset in presets()},
}


# operators that read device values on the host: item()/int()/float(), data-dependent shapes
SYNCING = {"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "masked_select",
           "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim", "repeat_interleave"}


class SyncingOps(TorchDispatchMode):
    """Records every dispatched operator that would wait on a CUDA device."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        bool_index = name in ("index", "index_put", "index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)
        if name in SYNCING or bool_index:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


class FixedPlan:
    """A schedule slot returning a plan made beforehand (so it is made outside the checked span)."""

    def __init__(self, plan: list[StepInfo]) -> None:
        self.steps = plan

    def plan(self, num_tokens: int, generator: torch.Generator) -> list[StepInfo]:
        return self.steps


@pytest.fixture
def sampler_on(random_trained_parts) -> Callable[[str, str], tuple[Sampler, torch.Tensor]]:
    """``sampler_on(device, case) -> (sampler, labels (5,))``: the case's sampler with its
    backbone on ``device``, and labels with the first, a middle and the last class and the null label."""
    def build(device: str, case: str) -> tuple[Sampler, torch.Tensor]:
        family, methods, overrides = CASES[case]
        stack = random_trained_parts(STACKS[family]())
        stack.backbone.to(device)
        classes = stack.backbone.layout.num_classes
        labels = torch.tensor([0, classes // 2, NULL_LABEL, classes - 1, 1 % classes], device=device)
        return build_sampler(resolve(methods, overrides), stack), labels
    return build


def test_every_method_has_a_toy_recipe() -> None:
    """A new method is checked once it has a recipe here."""
    assert {method for methods, _ in TOY_RECIPES.values() for method in methods} == set(registry.METHODS)


@pytest.mark.parametrize("case", list(CASES))
def test_no_syncing_operator_inside_the_sampling_loop(sampler_on, case: str) -> None:
    sampler, labels = sampler_on("cpu", case)
    generator = batch_generator(0, 0)
    sampler.schedule = FixedPlan(sampler.schedule.plan(sampler.backbone.seq_len, generator))
    with SyncingOps() as ops:
        ids = sampler(labels, generator)
    assert ops.seen == []
    assert (ids != sampler.backbone.layout.mask_id).all()


def test_the_stand_in_sees_a_sync() -> None:
    """The CPU stand-in catches what the GPU check would: int() and boolean indexing."""
    x = torch.arange(6.0)
    with SyncingOps() as ops:
        int(x.max())
        x[x > 2]
    assert any("_local_scalar_dense" in op for op in ops.seen) and any("index" in op for op in ops.seen)


@contextmanager
def sync_errors() -> Iterator[None]:
    """Every synchronising CUDA call raises inside the block."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_no_host_sync_on_cuda(sampler_on, case: str, precision: str) -> None:
    sampler, labels = sampler_on("cuda", case)
    with autocast(precision, "cuda"):
        sampler(labels, batch_generator(0, 0, "cuda"))  # warm-up: lazy CUDA initialisation may sync
        generator = batch_generator(0, 1, "cuda")
        torch.cuda.synchronize()
        with sync_errors():
            ids = sampler(labels, generator)
    torch.cuda.synchronize()
    assert (ids != sampler.backbone.layout.mask_id).all()
