"""Images/s of each stage of the ImageNet path at full size: token sampling, VQGAN decoding,
Inception features. For a GPU machine without the released files: the stack and the Inception
network have seeded random weights (their speed does not depend on the weights).

``python -m migbench.benchmarks.stage_speed --backbone valeoai_maskgit_256 --n 2000 --device cuda
--out speed.json`` samples N images batch by batch with a methods list (default the valeoai
preset at the README's 256 px settings), decodes each batch with the stack's tokenizer as a
sweep does, extracts its Inception features, and times each stage with the device synchronised
around it. The first batch is a warm-up, not timed. Prints a table; ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from migbench.benchmarks.metrics.evaluate import Extractor, extract_batch
from migbench.benchmarks.metrics.random_inception import write_random_inception
from tabulate import tabulate

from migbench import registry
from migbench.cli import positive_int
from migbench.images import decode_images
from migbench.labels import balanced_labels
from migbench.precision import autocast, resolve
from migbench.recipe import build_sampler, expand_preset, parse_overrides
from migbench.recipe import resolve as resolve_recipe
from migbench.rng import batch_generator

VALEOAI_256 = ["maskgit.steps=8", "maskgit.choice_temperature=4.5", "maskgit.cfg_scale=3"]


def timed(device: torch.device, work: Callable[[], Any]) -> tuple[Any, float]:
    """``work()`` and its seconds, the device synchronised before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    out = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - started


def measure(backbone: str, methods: list[str], overrides: dict[str, Any], n: int, batch_size: int,
            device: torch.device, precision: str, inception: Path) -> dict[str, Any]:
    """Seconds and images/s of each stage over ``n`` images after one warm-up batch."""
    stack = registry.stack(backbone, random_weights=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stack.backbone.to(device)
    tokenizer = stack.tokenizer.to(device)
    sampler = build_sampler(resolve_recipe(methods, overrides).bind(stack), stack)
    extractor = Extractor.inception(str(inception))
    labels = balanced_labels(n + batch_size, stack.backbone.layout.num_classes)
    precision_used = resolve(precision, device)
    seconds = {"tokens": 0.0, "decode": 0.0, "features": 0.0}
    for j in range(-(-n // batch_size) + 1):  # batch 0 warms up
        batch = labels[j * batch_size:(j + 1) * batch_size].to(device)

        def sample(batch: torch.Tensor = batch, j: int = j) -> torch.Tensor:
            with autocast(precision_used, device):
                return sampler(batch, batch_generator(0, j, device))

        ids, t_tokens = timed(device, sample)
        images, t_decode = timed(device, lambda ids=ids: decode_images(tokenizer, ids).cpu().numpy())
        _, t_features = timed(device, lambda images=images: extract_batch(images, extractor, device))
        if j:
            for stage, t in zip(seconds, (t_tokens, t_decode, t_features), strict=True):
                seconds[stage] += t
    measured = -(-n // batch_size) * batch_size
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"backbone": backbone, "methods": methods, "overrides": overrides, "n": measured,
            "batch_size": batch_size, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "precision": precision_used, "nfe_per_image": sampler.nfe_per_image(), "torch": torch.__version__,
            "seconds": seconds, "images_per_second": {k: measured / v for k, v in seconds.items()},
            "end_to_end_images_per_second": measured / sum(seconds.values()), "peak_memory_gib": peak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="valeoai_maskgit_256")
    parser.add_argument("--methods", default="maskgit")
    parser.add_argument("--preset", default="valeoai")
    parser.add_argument("--set", action="append", default=None,
                        help="knob=value (default with the valeoai preset: its README's 256 px settings)")
    parser.add_argument("--n", type=positive_int, default=2000)
    parser.add_argument("--batch-size", type=positive_int, default=250)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--inception-weights", default=None, help="default: a random-weights file in a temp folder")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    pairs = args.set if args.set is not None else VALEOAI_256 if args.preset == "valeoai" else []
    overrides = expand_preset(args.preset or None, parse_overrides(pairs))
    with tempfile.TemporaryDirectory() as scratch:
        inception = Path(args.inception_weights) if args.inception_weights else \
            write_random_inception(Path(scratch) / "inception-random.pth")
        result = measure(args.backbone, args.methods.split(","), overrides, args.n, args.batch_size,
                         torch.device(args.device), args.precision, inception)
    rows = [[stage, f"{result['seconds'][stage]:.1f}", f"{rate:.1f}"]
            for stage, rate in result["images_per_second"].items()]
    rows.append(["end to end", f"{sum(result['seconds'].values()):.1f}", f"{result['end_to_end_images_per_second']:.1f}"])
    peak = f", peak memory {result['peak_memory_gib']:.1f} GiB" if result["peak_memory_gib"] is not None else ""
    print(f"{result['backbone']} {'+'.join(result['methods'])} on {result['device_name']} ({result['precision']}), "
          f"N = {result['n']}, batch {result['batch_size']}, NFE/image {result['nfe_per_image']['total']:g}{peak}")
    print(tabulate(rows, headers=["stage", "seconds", "images/s"]))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=float) + "\n")
    return 0 if np.isfinite(result["end_to_end_images_per_second"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
