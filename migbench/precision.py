"""Numeric precision of sampling and training, chosen for the machine it runs on.

``precision`` is one of ``auto``, ``bf16``, ``fp16`` or ``fp32``. ``auto`` takes bf16 autocast
only where the device runs bf16 natively:

- CUDA: ``torch.cuda.is_bf16_supported(including_emulation=False)`` (Ampere and later);
- x86 CPUs: AVX512-BF16 or AMX (``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``,
  else the ``avx512_bf16``/``amx_bf16`` flags of ``/proc/cpuinfo``); on an AVX2- or AVX512-only CPU
  bf16 is emulated and 5-50x slower than fp32, so ``auto`` gives fp32 there;
- aarch64 CPUs: the ``bf16`` feature flag;

and fp32 everywhere else. The precision *used* is what a result row records; two precisions give
different samples for the same seed (token choices flip where logits differ in rounding), so the
resolved precision is part of a run's identity.

``head_dtype = "fp32"`` runs the backbone's output head outside autocast, in fp32, while the rest
runs in bf16/fp16: at |logit| about 16 a bf16 logit moves in steps of 0.125, coarse for a
softmax and a Gumbel ranking over 1,024 codes. Backbones call their head through :func:`run_head`.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
HEAD_DTYPES = ("auto", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

_head_fp32: ContextVar[bool] = ContextVar("migbench_head_fp32", default=False)


def _cpu_flags() -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none)."""
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@lru_cache(maxsize=1)
def cpu_native_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively (detected once per process)."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        if all(callable(p) for p in probes):
            return any(p() for p in probes)
        return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())
    if machine in ("aarch64", "arm64"):
        return "bf16" in _cpu_flags()
    return False


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` runs bf16 natively (CUDA with bf16 units, or a CPU with AVX512-BF16/AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_native_bf16()
    return False


def check_precision(precision: str, what: str = "precision") -> str:
    """``precision`` if it is one of :data:`PRECISIONS`; a one-line ValueError otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"{what} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def resolve(precision: str, device: torch.device | str) -> str:
    """The precision actually used on ``device``: ``bf16``, ``fp16`` or ``fp32`` (``auto`` resolved)."""
    check_precision(precision)
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def explain(precision: str, device: torch.device | str) -> str:
    """One line saying what ``precision`` resolves to on ``device`` and why, for logs."""
    used = resolve(precision, device)
    if precision != "auto":
        return f"precision {used}"
    device = torch.device(device)
    return f"precision auto -> {used} ({device.type} {'with' if native_bf16(device) else 'without'} native bf16)"


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str, head_dtype: str = "auto") -> Iterator[None]:
    """Autocast to ``precision`` (``auto`` resolved for ``device``; fp32 is a no-op); with
    ``head_dtype="fp32"`` the head, called through :func:`run_head`, runs in fp32."""
    if head_dtype not in HEAD_DTYPES:
        raise ValueError(f"head_dtype must be one of {', '.join(HEAD_DTYPES)}, got {head_dtype!r}")
    device = torch.device(device)
    used = resolve(precision, device)
    token = _head_fp32.set(head_dtype == "fp32")
    try:
        if used == "fp32":
            yield
        else:
            with torch.autocast(device.type, dtype=DTYPES[used]):
                yield
    finally:
        _head_fp32.reset(token)


def run_head(head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
    """``head(hidden)``: under autocast with ``head_dtype="fp32"`` set, outside autocast in fp32."""
    device_type = hidden.device.type
    if _head_fp32.get() and torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return head(hidden.float())
    return head(hidden)


def accelerate_mixed_precision(precision: str, device: torch.device | str) -> str:
    """``accelerate``'s ``mixed_precision`` for ``precision`` on ``device``: bf16, fp16 or no."""
    used = resolve(precision, device)
    return "no" if used == "fp32" else used
