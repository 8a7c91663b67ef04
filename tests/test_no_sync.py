"""No host sync inside a sampling step, for every registered method.

On CUDA (``gpu`` marker, skipped without it): one batch of each recipe on the ``toy`` stack with
random trained parts runs under ``torch.cuda.set_sync_debug_mode("error")``, after a warm-up
batch. On the CPU, a stand-in: no operator that waits on the device when it runs on CUDA
(reading a value to the host, or a shape that depends on the data) is dispatched inside the
sampling loop. The schedule's plan is made before the loop: eMIGM draws its counts on the host.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from migbench.backbones.toy import toy
from torch.utils._python_dispatch import TorchDispatchMode

from migbench.guidance import StepInfo
from migbench.precision import autocast
from migbench.recipe import build_sampler, resolve
from migbench.rng import batch_generator
from migbench.sampler import Sampler

pytestmark = pytest.mark.usefixtures("toy_trained_parts")

RECIPES: dict[str, tuple[list[str], dict[str, object]]] = {
    "maskgit+cfg": (["maskgit"], {"maskgit.cfg_scale": 1.0}),
    "halton": (["halton"], {}),
    "halton resample": (["halton"], {"halton.resample_revealed": True}),
    "emigm+cfg_interval": (["emigm", "cfg_interval"], {"maskgit.cfg_scale": 2.0}),
    "token_critic": (["token_critic"], {}),
    "self_guidance": (["self_guidance"], {}),
    "ka_mig": (["ka_mig"], {"maskgit.cfg_scale": 1.0}),
    "ka_mig online": (["ka_mig"], {"ka_mig.precompute": False}),
}
LABELS = [0, 3, -1, 9, 5]

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


def sampler_on(device: str, recipe: str) -> Sampler:
    methods, overrides = RECIPES[recipe]
    stack = toy()
    stack.backbone.to(device)
    return build_sampler(resolve(methods, overrides), stack)


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_no_syncing_operator_inside_the_sampling_loop(recipe: str) -> None:
    sampler = sampler_on("cpu", recipe)
    generator = batch_generator(0, 0)
    sampler.schedule = FixedPlan(sampler.schedule.plan(sampler.backbone.seq_len, generator))
    with SyncingOps() as ops:
        ids = sampler(torch.tensor(LABELS), generator)
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
@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_no_host_sync_on_cuda(recipe: str, precision: str) -> None:
    sampler = sampler_on("cuda", recipe)
    labels = torch.tensor(LABELS, device="cuda")
    with autocast(precision, "cuda"):
        sampler(labels, batch_generator(0, 0, "cuda"))  # warm-up: lazy CUDA initialisation may sync
        generator = batch_generator(0, 1, "cuda")
        torch.cuda.synchronize()
        with sync_errors():
            ids = sampler(labels, generator)
    torch.cuda.synchronize()
    assert (ids != sampler.backbone.layout.mask_id).all()
