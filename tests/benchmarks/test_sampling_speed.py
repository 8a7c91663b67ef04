"""Sampling speed of the committed backbone: images/s, achieved GFLOP/s, and loop overhead.

Run with `make bench`. Sampling runs at ``precision=auto`` (bf16 where the CPU runs it natively,
else fp32; recorded in the benchmark's extra info). Overhead = sampler wall time / wall time of the same backbone passes
alone (same batch, same autocast) - 1: what the loop (log-softmax, categorical sampling, Gumbel
confidence, top-k selection) and a method's hooks add to the network. KA-MIG is measured on its
folded tables (the default) and on the online path, against the plain sampler.
"""

import time

import pytest
import torch
from migbench.backbones.fmnist import fmnist

from migbench.precision import autocast
from migbench.precision import resolve as resolve_precision
from migbench.recipe import build_sampler, resolve
from migbench.rng import batch_generator

pytestmark = pytest.mark.benchmark
BATCH, STEPS = 250, 8
PRECISION = resolve_precision("auto", "cpu")


def flops_per_pass(backbone) -> float:
    """Matmul FLOPs of one forward per image: blocks (24 d^2 per token + attention) and the head."""
    d, depth, length = backbone.width, backbone.depth, backbone.seq_len + 1
    blocks = depth * (24 * d * d * length + 4 * length * length * d)
    return blocks + 2 * d * backbone.layout.codebook_size * backbone.seq_len


RECIPES = {"maskgit": ("maskgit", {}), "ka_mig": ("ka_mig", {}),
           "ka_mig online": ("ka_mig", {"ka_mig.precompute": False})}


@pytest.fixture(scope="module")
def stack():
    return fmnist()


def backbone_only(stack, labels) -> float:
    ids = torch.full((BATCH, 64), stack.backbone.layout.mask_id)
    start = time.perf_counter()
    with torch.no_grad(), autocast(PRECISION, "cpu"):
        for _ in range(STEPS):
            stack.backbone(ids, labels)
    return time.perf_counter() - start


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_sampling_speed(benchmark, stack, recipe) -> None:
    methods, overrides = RECIPES[recipe]
    sampler = build_sampler(resolve(methods, {"maskgit.steps": STEPS, **overrides}), stack)
    labels = torch.arange(BATCH) % 10

    def run():
        with autocast(PRECISION, "cpu"):
            return sampler(labels, batch_generator(0, 0))

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    sampler_s = benchmark.stats.stats.min
    net_s = min(backbone_only(stack, labels) for _ in range(3))
    benchmark.extra_info.update({
        "precision": PRECISION,
        "images_per_s": BATCH / sampler_s,
        "gflop_per_s": flops_per_pass(stack.backbone) * BATCH * STEPS / sampler_s / 1e9,
        "loop_overhead": sampler_s / net_s - 1.0,
    })
    print(benchmark.extra_info)
