"""Halton-MaskGIT's training-free order (Besnier et al., ICLR 2025; valeoai/Halton-MaskGIT).

Positions are revealed in a fixed 2-D low-discrepancy order instead of by confidence: the
Halton sequence with base 2 for rows and base 3 for columns (starting at 1/2, 1/3), scaled to
the h x w grid, floored, duplicates dropped. After step k (0-based) of T the first
r_k = max(k + 1, int(N (1 - arccos((k+1)/T) / (pi/2)))) positions of that order are revealed.
Revealed tokens are kept (the default, ``resample_revealed = false``): each step writes samples
only at the newly revealed positions, as the paper describes and as upstream's current code does
(Halton-MaskGIT fcdc837, Jul 2025, still at f61b0a1: ``halton_mask[:, prev_r:r]``).
``resample_revealed = true`` is the ICLR-era code (c1cd3f1 to 08cfdae, ``halton_mask[:, :r]``),
which wrote fresh samples at *all* revealed positions every step and probably produced the
paper's FID table (issues #27/#36 discuss it). Resampling suits backbones trained with a loss
on visible tokens too (valeoai's v1.0 and v2.0 trainers), not ours (masked-token loss, as
Google's MaskGIT): on the embedded stack it more than doubles FID.
As upstream, the logits are multiplied by a factor rising linearly from ``sm_temp_min`` to
``sm_temp_max`` over the steps, and there is no Gumbel noise. ``randomize`` rolls the order by a
random offset per sample. Defaults follow the upstream README demo (1 -> 1.2, randomize); the
sampler class itself defaults to 1 -> 1 without randomisation. Upstream uses constant CFG.

This method takes the ``schedule``, ``scorer`` and ``selector`` slots (and ``token_sampler``
with ``resample_revealed``). Neutral setting:
``enabled = false`` installs nothing, leaving the MaskGIT baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from migbench.config import check_logit_scale, knob
from migbench.guidance import StepInfo
from migbench.sampler import SamplerBuilder, SampleState
from migbench.schedules import plan_from_counts
from migbench.slots import categorical_everywhere


@dataclass(frozen=True)
class HaltonConfig:
    steps: int = knob(8, "number of sampling steps T (upstream demo: 32 at 16x16 tokens)")
    sm_temp_min: float = knob(1.0, "logit multiplier at the first step")
    sm_temp_max: float = knob(1.2, "logit multiplier at the last step")
    randomize: bool = knob(True, "roll the Halton order by a random offset per sample")
    resample_revealed: bool = knob(False, "true: resample every revealed token each step (ICLR-era upstream "
                                          "c1cd3f1-08cfdae); false: write only new positions (upstream since "
                                          "fcdc837, the paper)")
    enabled: bool = knob(True, "false installs nothing (the neutral setting)")

    def __post_init__(self) -> None:
        """Refuse fewer than one step and logit multipliers outside (0, MAX_LOGIT_SCALE]."""
        if self.steps < 1:
            raise ValueError(f"halton.steps must be >= 1, got {self.steps}")
        for name in ("sm_temp_min", "sm_temp_max"):
            value = getattr(self, name)
            check_logit_scale(f"halton.{name}", value, value)


def halton_sequence(base: int, count: int) -> list[float]:
    """The first ``count`` terms of the van der Corput sequence in ``base``, from 1/base."""
    out = []
    for index in range(1, count + 1):
        value, f, i = 0.0, 1.0, index
        while i > 0:
            f /= base
            value += f * (i % base)
            i //= base
        out.append(value)
    return out


@lru_cache(maxsize=8)
def halton_order(height: int, width: int) -> tuple[int, ...]:
    """Flat positions (row * width + col) of an h x w grid in 2-D Halton order (bases 2, 3)."""
    seen: dict[int, None] = {}
    count = 64
    while len(seen) < height * width:
        count *= 2
        rows, cols = halton_sequence(2, count), halton_sequence(3, count)
        seen = {}
        for r, c in zip(rows, cols, strict=True):
            seen.setdefault(int(r * height) * width + int(c * width), None)
    return tuple(seen)


def halton_rank(grid: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(h * w,) int64 on ``device``: each position's index in the 2-D Halton order over the token
    ``grid`` (h, w), built once per install on the backbone's device (no copy per batch)."""
    h, w = grid
    order = torch.tensor(halton_order(h, w))
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return rank.to(device)


def revealed_after_step(step: int, num_steps: int, num_tokens: int) -> int:
    """r_k = max(k + 1, int(N (1 - arccos((k+1)/T) / (pi/2))))."""
    ratio = (step + 1) / num_steps
    return max(step + 1, int((1.0 - math.acos(ratio) / (math.pi / 2)) * num_tokens))


@dataclass(frozen=True)
class HaltonSchedule:
    steps: int

    def plan(self, num_tokens: int, generator: torch.Generator | None = None) -> list[StepInfo]:
        after = [num_tokens - min(num_tokens, revealed_after_step(k, self.steps, num_tokens))
                 for k in range(self.steps)]
        return plan_from_counts(after, self.steps, num_tokens)


class Halton:
    """Halton-MaskGIT: reveal in a fixed 2-D Halton order, no Gumbel; revealed tokens kept (or
    resampled every step, as the ICLR-era code did, with ``resample_revealed``)."""

    name = "halton"
    config_cls = HaltonConfig
    trained = False

    @staticmethod
    def neutral_config() -> HaltonConfig:
        return HaltonConfig(enabled=False)

    @staticmethod
    def requires(config: HaltonConfig) -> tuple[str, ...]:
        """A 2-D token grid: the order is a 2-D Halton sequence (bases 2 and 3 over rows and
        columns). On 1-D tokens it is refused, not replaced by a 1-D van der Corput order, which
        would be another method."""
        return ("grid2d",) if config.enabled else ()

    @staticmethod
    def install(builder: SamplerBuilder, config: HaltonConfig) -> None:
        if not config.enabled:
            return
        device = next(builder.backbone.parameters()).device
        rank = halton_rank(builder.stack.tokenizer.token_shape, device)

        def ranks(state: SampleState) -> torch.Tensor:
            """(B, N) position ranks in the (possibly rolled) order; smaller = earlier."""
            if "halton_rank" not in state.memory:
                (b, n), device = state.ids.shape, state.ids.device
                shift = (torch.randint(0, n, (b, 1), generator=state.generator, device=device)
                         if config.randomize else torch.zeros(b, 1, dtype=torch.long, device=device))
                state.memory["halton_rank"] = (rank[None] + shift) % n
            return state.memory["halton_rank"]

        def scorer(candidates: torch.Tensor, logp: torch.Tensor, state: SampleState) -> torch.Tensor:
            return -ranks(state).float()

        def selector(candidates: torch.Tensor, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
            revealed = scores > -float(state.info.num_tokens - state.info.masked_after)
            source = state.tokens if config.resample_revealed else candidates
            return torch.where(revealed, source, state.backbone.layout.mask_id)

        def multiplier(logits: torch.Tensor, state: SampleState) -> torch.Tensor:
            k, t = state.info.step, state.info.num_steps
            factor = config.sm_temp_min + (config.sm_temp_max - config.sm_temp_min) * k / max(1, t - 1)
            return logits * factor

        builder.claim("schedule", HaltonSchedule(config.steps), Halton.name)
        builder.claim("scorer", scorer, Halton.name)
        builder.claim("selector", selector, Halton.name)
        if config.resample_revealed:
            builder.claim("token_sampler", categorical_everywhere, Halton.name)
        builder.add_processor(multiplier, Halton.name)
