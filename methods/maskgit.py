"""MaskGIT confidence sampling (Chang et al., CVPR 2022) with classifier-free guidance: the base.

Every sampler starts from this method; it holds the four slots weakly, so a method such as
``halton`` or ``token_critic`` can take one over. Per step k of T (Google's maskgit code):

- reveal schedule: after step k, floor(N gamma(1 - (k+1)/T)) tokens stay masked, at least one
  revealed per step, all by the last (:func:`migbench.schedules.masked_after_steps`); gamma is
  cosine by default, or arccos (this floor rule with arccos is TiTok's sampler), linear, exp,
  or explicit per-step ratios (AutoNAT). ``arccos-valeoai`` is valeoai v1.0's own rule instead:
  per-step counts proportional to arccos(linspace(1, 0, T)), one token at step 0
  (:func:`migbench.schedules.valeoai_reveal_counts`);
- tokens ~ softmax(l / T_soft) at masked positions ("divisor", Google/TiTok). valeoai's
  ``sm_temp`` multiplies the logits instead ("multiplier": softmax(l * T_soft));
- confidence = log p(chosen) + tau_k * Gumbel, with p the tempered softmax the token was drawn
  from; tau_k = tau0 (1 - (k+1)/T) ("linear", Google); open-muse compounds the decay
  ("compound"); valeoai anneals tau0 (1 - k/(T-1)) ("linear-valeoai"). Decoded tokens keep
  +inf confidence and are never re-masked; the lowest-confidence masked positions stay masked;
- CFG: l = (1 + w_k) l_c - w_k l_u (eq. 1 of :mod:`migbench.guidance`) with w_k constant, a
  linear ramp w k/T (MUSE/TiTok), w k/(T-1) (valeoai, KA-MIG) or power-cosine (MDT).
  ``cfg_convention="muse"`` reads ``cfg_scale`` as MUSE/MAR's w' in u + w'(c - u), i.e.
  w = w' - 1.

``presets["valeoai"]`` (:data:`VALEOAI`) bundles valeoai v1.0's conventions; ``migbench sample
--preset valeoai`` and a suite's ``preset = "valeoai"`` expand it into ordinary overrides
(:func:`migbench.recipe.expand_preset`).

Neutral setting: this method *is* the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from migbench.api import NULL_LABEL
from migbench.config import check_choices, check_guidance_scale, check_logit_scale, knob
from migbench.guidance import GuidanceTerm, StepInfo
from migbench.rng import gumbel
from migbench.sampler import SamplerBuilder, SampleState
from migbench.schedules import (
    CHOICE_ANNEALS,
    GUIDANCE_SCHEDULES,
    SAMPLING_SCHEDULES,
    choice_temperature,
    guidance_scale,
    masked_after_steps,
    plan_from_counts,
)
from migbench.slots import categorical, lowest


@dataclass(frozen=True)
class MaskGITConfig:
    """Knobs of the base sampler; defaults follow Google's MaskGIT (T=8, cosine, tau0=4.5)."""

    steps: int = knob(8, "number of sampling steps T")
    schedule: str = knob("cosine", "reveal schedule: gamma under Google's floor rule (arccos = TiTok's), "
                                   "or arccos-valeoai (valeoai v1.0: normalised arccos increments)",
                         SAMPLING_SCHEDULES)
    ratios: tuple[float, ...] = knob((), "explicit mask ratio after each step (AutoNAT); overrides schedule")
    temperature: float = knob(1.0, "softmax temperature of token sampling")
    temperature_mode: str = knob("divisor", "divisor: softmax(l / T) (Google, TiTok, open-muse); "
                                            "multiplier: softmax(l * T) (valeoai's sm_temp)",
                                 ("divisor", "multiplier"))
    choice_temperature: float = knob(4.5, "tau0, Gumbel scale of the confidence")
    choice_anneal: str = knob("linear", "tau decay: Google linear tau0(1-(k+1)/T), open-muse compound, "
                                        "or linear-valeoai tau0(1-k/(T-1))", CHOICE_ANNEALS)
    cfg_scale: float = knob(0.0, "classifier-free guidance scale w (0 = off, no extra pass)")
    cfg_schedule: str = knob("constant", "CFG scale over steps: constant, linear w k/T (MUSE/TiTok), "
                                         "power-cosine (MDT), linear-valeoai w k/(T-1) (valeoai, KA-MIG)",
                             GUIDANCE_SCHEDULES)
    cfg_convention: str = knob("maskgit", "maskgit: (1+w)c - wu; muse: u + w(c-u)", ("maskgit", "muse"))

    def __post_init__(self) -> None:
        check_choices(self)
        if self.steps < 1:
            raise ValueError(f"maskgit.steps must be >= 1, got {self.steps}")
        if self.temperature <= 0:
            raise ValueError(f"maskgit.temperature must be > 0, got {self.temperature}")
        scale = 1.0 / self.temperature if self.temperature_mode == "divisor" else self.temperature
        check_logit_scale("maskgit.temperature", self.temperature, scale)
        check_guidance_scale("maskgit.cfg_scale", self.cfg_scale)
        if self.ratios and len(self.ratios) != self.steps:
            raise ValueError(f"maskgit.ratios has {len(self.ratios)} values for {self.steps} steps")


VALEOAI: dict[str, Any] = {
    "maskgit.schedule": "arccos-valeoai",
    "maskgit.choice_anneal": "linear-valeoai",
    "maskgit.cfg_schedule": "linear-valeoai",
    "maskgit.temperature_mode": "multiplier",
    "maskgit.cfg_convention": "maskgit",
}
"""valeoai v1.0's sampler conventions (Maskgit-pytorch 674ef1d, Trainer/vit.py ``sample`` and
``adap_sche``): the arccos schedule of normalised per-step increments (one token at step 0),
Gumbel noise r_temp (1 - k/(T-1)) added to log p, CFG (1 + w_k) l_c - w_k l_u with
w_k = w k/(T-1), and ``sm_temp`` multiplying the logits. The conventions only: the paper values
are set by suites (README of v1.0): 256 px, ``choice_temperature`` (r_temp) 4.5, ``cfg_scale``
(w) 3, ``steps`` 8 (FID 6.80, IS 214); 512 px, 7, 2.8, 15 (FID 7.26, IS 223); ``temperature``
(sm_temp) 1 at both (its demo: 1.3, w 9, 32 steps). Upstream feeds the unconditional branch the
same labels with ``drop_label`` set, i.e. its drop-class token 2025; here CFG passes NULL_LABEL,
which the valeoai backbone maps to that token."""


@dataclass(frozen=True)
class RevealSchedule:
    """MaskGIT's schedule slot: reveal counts of the mask schedule on eMIGM's time grid (t_k, s_k)."""

    steps: int
    schedule: str | tuple[float, ...]

    def plan(self, num_tokens: int, generator: torch.Generator | None = None) -> list[StepInfo]:
        return plan_from_counts(masked_after_steps(self.schedule, self.steps, num_tokens), self.steps, num_tokens)


def keep_decoded(candidates: torch.Tensor, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
    """MaskGIT's selector: the ``masked_after`` lowest-scoring *masked* positions stay masked."""
    scores = scores.masked_fill(~state.masked, float("inf"))
    return candidates.masked_fill(lowest(scores, state.info.masked_after), state.backbone.layout.mask_id)


class MaskGIT:
    """The base method: reveal schedule, temperature, confidence + annealed Gumbel, keep, CFG."""

    name = "maskgit"
    config_cls = MaskGITConfig
    trained = False
    # knobs that act only while this method holds the slot (a warning says when they do not)
    slot_knobs = {"schedule": ("steps", "schedule", "ratios"), "scorer": ("choice_temperature", "choice_anneal")}
    # named bundles of overrides, expanded before a recipe is resolved (migbench.recipe.expand_preset)
    presets: dict[str, dict[str, Any]] = {"valeoai": VALEOAI}

    @staticmethod
    def neutral_config() -> MaskGITConfig:
        return MaskGITConfig()

    @staticmethod
    def install(builder: SamplerBuilder, config: MaskGITConfig) -> None:
        name = MaskGIT.name
        schedule = config.ratios if config.ratios else config.schedule
        builder.claim("schedule", RevealSchedule(config.steps, schedule), name, weak=True)
        builder.claim("token_sampler", categorical, name, weak=True)
        builder.claim("selector", keep_decoded, name, weak=True)

        def confidence(candidates: torch.Tensor, logp: torch.Tensor, state: SampleState) -> torch.Tensor:
            tau = choice_temperature(config.choice_temperature, state.info.step,
                                     state.info.num_steps, config.choice_anneal)
            if tau == 0.0:
                return logp
            return logp + tau * gumbel(logp.shape, state.generator, logp.device)

        builder.claim("scorer", confidence, name, weak=True)
        if config.temperature != 1.0:
            t = config.temperature
            scale = 1.0 / t if config.temperature_mode == "divisor" else t
            builder.add_processor(lambda logits, state: logits * scale, name)
        if config.cfg_scale != 0.0 or config.cfg_convention == "muse":
            w = config.cfg_scale - 1.0 if config.cfg_convention == "muse" else config.cfg_scale

            def unconditional(ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return ids, torch.full_like(labels, NULL_LABEL)

            builder.add_guidance(GuidanceTerm(
                name="cfg", owner=name, inputs=unconditional,
                scale_at=lambda info: guidance_scale(config.cfg_schedule, w, info.step, info.num_steps)))
