"""Sampling speed of an ImageNet-size MaskedTransformer on one CUDA GPU (skipped without CUDA).

Our ``MaskedTransformer`` at width 768, depth 24, 16 heads, N = 256 tokens, K = 1024 codes,
1000 classes, random weights; batch 256, bf16 autocast, T = 8 MaskGIT steps, with and without
CFG, eager and with ``compile_backbone`` (``torch.compile(dynamic=False)``). Reported (printed and
in ``benchmark.extra_info``):

- ``images_per_s``: images per second of the sampler;
- ``backbone_tflop_per_s``: analytic FLOPs of the backbone passes over the time of the same
  passes run bare (same batches, same autocast); ``sampler_tflop_per_s`` the same FLOPs over the
  sampler's time. FLOPs per forward and sample: 2 x (matmul weights) x (tokens they act on) plus
  attention 4 L^2 d per block (L = N + 1 with the class token);
- ``peak_tflop_per_s``: the measured bf16 matmul peak of this GPU (8192^2 x 8192^2);
  ``fraction_of_peak`` = backbone / peak;
- ``loop_overhead``: sampler time / bare backbone passes time - 1 (what sampling adds to the
  network: softmax, Gumbel draws, top-k, the canvas updates, and any host sync).

Run with ``pytest -m benchmark --benchmark-enable -s tests/benchmarks/test_gpu_speed.py`` (``make
bench`` runs it too; without CUDA it is skipped).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch
from migbench.backbones.fmnist.transformer import MaskedTransformer, TransformerConfig

from migbench.api import DatasetSpec, Stack
from migbench.precision import autocast
from migbench.recipe import build_sampler, resolve
from migbench.rng import batch_generator

pytestmark = [pytest.mark.benchmark, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
DEVICE, BATCH, STEPS, CFG_SCALE = "cuda", 256, 8, 2.0
IMAGENET = TransformerConfig(codebook_size=1024, num_tokens=256, num_classes=1000, width=768, depth=24,
                             heads=16)


def flops_per_forward(backbone: MaskedTransformer) -> float:
    """Matmul FLOPs of one forward per sample: 2 x weights x tokens (blocks act on L = N + 1
    tokens, the head on the N image tokens) plus attention 4 L^2 d per block."""
    length, n = backbone.seq_len + 1, backbone.seq_len
    block_weights = sum(m.weight.numel() for m in backbone.blocks.modules() if isinstance(m, torch.nn.Linear))
    attention = backbone.depth * 4 * length * length * backbone.width
    return 2.0 * (block_weights * length + backbone.head.weight.numel() * n) + attention


def cuda_seconds(fn: Callable[[], object]) -> float:
    """Wall seconds of ``fn()`` with the GPU drained before and after."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def bf16_matmul_peak(size: int = 8192, repeats: int = 20) -> float:
    """Measured bf16 matmul throughput (FLOP/s) of a size x size product."""
    a = torch.randn(size, size, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=DEVICE, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    seconds = cuda_seconds(lambda: [a @ b for _ in range(repeats)])
    return 2.0 * size**3 * repeats / seconds


@pytest.fixture(scope="module")
def backbone() -> MaskedTransformer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MaskedTransformer(IMAGENET)
    return model.eval().requires_grad_(False).to(DEVICE)


@pytest.fixture(scope="module")
def peak() -> float:
    return bf16_matmul_peak()


class GridShape:
    """A tokenizer standing in for a 16 x 16-token, 256 px one (the benchmark never decodes)."""

    codebook_size, token_shape, image_shape = IMAGENET.codebook_size, (16, 16), (3, 256, 256)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def stack_of(backbone: MaskedTransformer) -> Stack:
    data = DatasetSpec("imagenet-size", tuple(map(str, range(IMAGENET.num_classes))), "none", "inception-v3-compat")
    return Stack("imagenet-size", GridShape(), backbone, data)


def bare_passes(backbone: torch.nn.Module, labels: torch.Tensor, branches: int) -> Callable[[], None]:
    """The sampler's backbone calls alone: STEPS forwards of branches x BATCH images."""
    ids = torch.full((branches * BATCH, IMAGENET.num_tokens), backbone.layout.mask_id, device=DEVICE)
    all_labels = labels.repeat(branches)

    @torch.no_grad()
    def run() -> None:
        with autocast("bf16", DEVICE):
            for _ in range(STEPS):
                backbone(ids, all_labels)
    return run


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("cfg", [False, True], ids=["no-cfg", "cfg"])
def test_gpu_sampling_speed(benchmark, backbone, peak, cfg: bool, compiled: bool) -> None:
    overrides = {"maskgit.steps": STEPS, "maskgit.cfg_scale": CFG_SCALE if cfg else 0.0}
    sampler = build_sampler(resolve("maskgit", overrides), stack_of(backbone))
    bare_model = torch.compile(backbone, dynamic=False) if compiled else backbone
    if compiled:
        sampler.compile_backbone()
    labels = torch.arange(BATCH, device=DEVICE) % IMAGENET.num_classes
    branches = 2 if cfg else 1

    def sample() -> torch.Tensor:
        with autocast("bf16", DEVICE):
            ids = sampler(labels, batch_generator(0, 0, DEVICE))
        torch.cuda.synchronize()
        return ids

    bare = bare_passes(bare_model, labels, branches)
    for _ in range(2):  # warm-up: compilation, cuBLAS and attention kernel selection
        cuda_seconds(bare)
    benchmark.pedantic(sample, rounds=3, warmup_rounds=2)
    sampler_s = benchmark.stats.stats.min if benchmark.stats else min(cuda_seconds(sample) for _ in range(3))
    bare_s = min(cuda_seconds(bare) for _ in range(3))
    flops = flops_per_forward(backbone) * BATCH * branches * STEPS
    benchmark.extra_info.update({
        "images_per_s": BATCH / sampler_s,
        "backbone_tflop_per_s": flops / bare_s / 1e12,
        "sampler_tflop_per_s": flops / sampler_s / 1e12,
        "peak_tflop_per_s": peak / 1e12,
        "fraction_of_peak": flops / bare_s / peak,
        "loop_overhead": sampler_s / bare_s - 1.0,
        "sampler_s": sampler_s,
        "bare_backbone_s": bare_s,
        "compiled": compiled,
        "cfg_scale": overrides["maskgit.cfg_scale"],
    })
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in benchmark.extra_info.items()})
