"""eMIGM (You et al., "Effective and Efficient Masked Image Generation Models", ICML 2025).

Two methods, following the released code (ML-GSAI/eMIGM ``models/emigm.py: sample_tokens``):

``emigm`` -- the masked-diffusion ancestral sampler (random order, not confidence):
  the time grid is t_k = linspace(1, 1e-5, T + 1); at step t -> s each masked token is revealed
  with probability 1 - gamma(s)/gamma(t) (gamma: linear t, cosine cos(pi/2 (1 - t)),
  exp 1 - e^{-5t}, poly-0.5 sqrt(t), log ln(1 + (e^5 - 1) t)/5); the *number* revealed is drawn
  once per step and shared by the batch (upstream reuses row 0's uniforms), at least one per step,
  all at the last step; which positions is uniform per image; tokens are never re-masked. The
  counts are drawn up front on the host (same distribution, known to the CFG schedule before the
  step): from the batch generator on the CPU, from a CPU generator seeded like it on an
  accelerator (:class:`AncestralSchedule`). Takes the ``schedule`` and ``scorer`` slots;
  MaskGIT's keep-decoded selector and categorical token sampler stay. Neutral setting:
  ``enabled = false``.

``cfg_interval`` -- time-interval CFG and eMIGM's CFG-scale schedules, on whatever sampler runs:
  guidance only when the *next* time s lies in (t_min, t_max] (open at t_min, closed at t_max);
  outside it the unconditional pass is skipped for real (fewer NFE). Inside it, with the base CFG
  scale w (``maskgit.cfg_scale``; eMIGM writes u + cfg (c - u), i.e. ``cfg_convention="muse"``,
  w = cfg - 1), the scale is w f(x), x = the fraction of tokens revealed after the step:
  constant f = 1, linear x, power x^2, cubic x^3, exp 1 - e^{-5x}, cosine cos(pi/2 (1 - x))
  (upstream: 1 + (cfg - 1) f(x) in its convention). Neutral setting: (0, 1] with ``constant``.
  Released 16-step evaluation: exp schedule, constant cfg 4, interval (0.1, 0.3] -> 19 NFE.
  The interval is on *time*, shared by every sampler (all use the grid linspace(1, 1e-5, T+1)),
  not on the mask ratio: under eMIGM's exp schedule (0.1, 0.3] means post-step mask ratios in
  (0.39, 0.78]; under MaskGIT's cosine schedule the same interval covers ratios (0.16, 0.45].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from migbench.config import check_choices, knob
from migbench.guidance import StepInfo
from migbench.sampler import SamplerBuilder, SampleState
from migbench.schedules import MASK_SCHEDULES, mask_ratio, plan_from_counts, time_grid

CFG_SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda x: 1.0,
    "linear": lambda x: x,
    "power": lambda x: x**2,
    "cubic": lambda x: x**3,
    "exp": lambda x: 1.0 - math.exp(-5.0 * x),
    "cosine": lambda x: math.cos(math.pi / 2 * (1.0 - x)),
}


def transfer_probability(schedule: str, t: float, s: float, last: bool) -> float:
    """P(a masked token is revealed at t -> s) = 1 - gamma(s)/gamma(t); 1 at the last step."""
    return 1.0 if last else 1.0 - mask_ratio(schedule, s) / mask_ratio(schedule, t)


@dataclass(frozen=True)
class EMIGMConfig:
    steps: int = knob(16, "number of sampling steps (released evaluation: 16)")
    mask_schedule: str = knob("exp", "gamma(t) of the reveal probabilities", tuple(MASK_SCHEDULES))
    enabled: bool = knob(True, "false installs nothing (the neutral setting)")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.steps < 1:
            raise ValueError(f"emigm.steps must be >= 1, got {self.steps}")


def host_generator(generator: torch.Generator) -> torch.Generator:
    """The CPU generator eMIGM's counts are drawn from: ``generator`` itself when it lives on the
    CPU; for an accelerator's generator, a CPU generator seeded with its seed
    (``generator.initial_seed()``), so planning never waits on the device."""
    if generator.device.type == "cpu":
        return generator
    return torch.Generator().manual_seed(generator.initial_seed())


@dataclass(frozen=True)
class AncestralSchedule:
    """eMIGM's schedule slot: random reveal counts shared by the batch, drawn up front on the host.

    With a CPU batch generator the counts come from it, before any other draw of the batch (as
    they always have: CPU samples are unchanged). With a CUDA batch generator they come from a
    CPU generator seeded with the batch generator's seed (:func:`host_generator`): counts drawn on
    the device would have to be read back, a wait on it per step; the device's random stream is
    left untouched. Either way the plan depends on the batch seed alone, in every process."""

    steps: int
    mask_schedule: str

    def plan(self, num_tokens: int, generator: torch.Generator) -> list[StepInfo]:
        grid = time_grid(self.steps)
        host = host_generator(generator)
        after, masked = [], num_tokens
        for k in range(self.steps):
            last = k == self.steps - 1
            p = transfer_probability(self.mask_schedule, grid[k], grid[k + 1], last)
            draws = torch.rand(masked, generator=host)
            masked -= masked if last else max(1, int((draws < p).sum()))
            after.append(masked)
            if masked == 0:
                break
        return plan_from_counts(after, self.steps, num_tokens)


def random_order(candidates: torch.Tensor, logp: torch.Tensor, state: SampleState) -> torch.Tensor:
    """Uniform random scores (B, N): the keep-decoded selector then reveals a uniform subset."""
    return torch.rand(candidates.shape, generator=state.generator, device=candidates.device)


class EMIGM:
    """eMIGM's masked-diffusion ancestral sampler: random-order reveal with gamma-ratio counts."""

    name = "emigm"
    config_cls = EMIGMConfig
    trained = False

    @staticmethod
    def neutral_config() -> EMIGMConfig:
        return EMIGMConfig(enabled=False)

    @staticmethod
    def install(builder: SamplerBuilder, config: EMIGMConfig) -> None:
        if not config.enabled:
            return
        builder.claim("schedule", AncestralSchedule(config.steps, config.mask_schedule), EMIGM.name)
        builder.claim("scorer", random_order, EMIGM.name)


@dataclass(frozen=True)
class CFGIntervalConfig:
    t_min: float = knob(0.1, "guidance only when the next time s > t_min (released 16-step: 0.1)")
    t_max: float = knob(0.3, "... and s <= t_max (released 16-step: 0.3)")
    scale_schedule: str = knob("constant", "f(x) multiplying the CFG scale, x = fraction revealed",
                               tuple(CFG_SCHEDULES))

    def __post_init__(self) -> None:
        check_choices(self)
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"cfg_interval needs 0 <= t_min < t_max <= 1, got ({self.t_min}, {self.t_max}]")


def interval_scale(base: Callable[[StepInfo], float], config: CFGIntervalConfig) -> Callable[[StepInfo], float]:
    """Wrap a CFG scale: 0 outside (t_min, t_max], base * f(revealed fraction after the step) inside."""
    f = CFG_SCHEDULES[config.scale_schedule]

    def scale_at(info: StepInfo) -> float:
        if not config.t_min < info.s <= config.t_max:
            return 0.0
        return base(info) * f(1.0 - info.masked_after / info.num_tokens)

    return scale_at


class CFGInterval:
    """Time-interval CFG with eMIGM's scale schedules, wrapping the base CFG term."""

    name = "cfg_interval"
    config_cls = CFGIntervalConfig
    trained = False

    @staticmethod
    def neutral_config() -> CFGIntervalConfig:
        return CFGIntervalConfig(t_min=0.0, t_max=1.0, scale_schedule="constant")

    @staticmethod
    def install(builder: SamplerBuilder, config: CFGIntervalConfig) -> None:
        term = builder.guidance.get("cfg")
        if term is not None:  # CFG off (scale 0): nothing to restrict
            term.scale_at = interval_scale(term.scale_at, config)
