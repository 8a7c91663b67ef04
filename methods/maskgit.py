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
  w = w' - 1. A step whose w_k is 0 runs no unconditional pass (and counts no NFE for it).

Per-step lists (AutoNAT's searched strategies, Ni et al. CVPR 2024; empty = off, T values when
given): ``choice_temperatures`` tau_k replaces tau0 and its anneal, ``temperatures`` T_soft,k
replaces ``temperature`` (read by ``temperature_mode``), ``cfg_scales`` w_k replaces
``cfg_scale`` and ``cfg_schedule`` (read by ``cfg_convention``). ``confidence="untempered"``
takes log p from log_softmax of the guided logits *before* the temperature (any logit
processor), as AutoNAT's ``generate``: ``Categorical(logits / samp_temp)`` samples, then
``log_softmax(logits)`` scores. The defaults (empty lists, ``tempered``) are today's sampler, and
these knobs are left out of a recipe's description while at them (run hashes unchanged).
``presets["autonat_t8"]`` (:data:`AUTONAT_T8`) is AutoNAT-L's searched T = 8 strategy;
``presets["unlockmgm"]`` (:data:`UNLOCKMGM`) the sampler of the self-guidance release.

Upstream arithmetic (fidelity findings F3-F5; defaults are today's sampler, left out of a recipe's
description while at them): ``schedule=google-exp|google-log|google-pow2|google-pow3`` are Google
MaskGIT's own N-dependent schedules (mask_schedule.py: 1 - N^-(1-r), -log2(r)/log2(N), 1 - r^X),
beside eMIGM's ``exp``/``log``, which took those names first; ``count_precision=float32``
computes floor(N gamma) in float32 as Google's JAX code and open-muse do (T=18, N=256: 127 tokens
stay masked after step 11, 128 in float64; the paper states only the formula);
``decoded_confidence=finite`` gives decoded tokens open-muse's confidence log(float32 max) =
88.72 plus the step's tau Gumbel and picks the masked positions among *all* tokens, so at high tau
(the self-guidance recipe, tau0 = 25 compound) a decoded token can be re-masked
(:func:`remask_decoded`); Google's paper and code, and the default, keep decoded tokens.

TiTok's sampler (1d-tokenizer ``ImageBert.generate``; defaults are today's sampler, left out of a
recipe's description while at them): ``token_draw=choice-gumbel`` draws tokens as argmax(l + tau_k G)
at the step's choice temperature instead of from softmax(l) (:func:`migbench.slots.choice_gumbel_max`);
``confidence=logit`` scores the drawn id's logit after guidance and temperature instead of a log p;
``temperature_anneal=titok`` divides the logits by temperature (0.5 + 0.8 (1 - (k+1)/T))
(:func:`annealed_temperature`); ``cfg_power`` is the power-cosine exponent (TiTok's
``guidance_scale_pow``); ``cfg_unguided_pass=run`` runs the unconditional pass also at a step whose
scale leaves the logits alone, as TiTok's power-cosine mode does from step 0 (the samples are the
same; the NFE is upstream's, fidelity finding F10). ``presets["titok_l32"|"titok_b64"|"titok_s128"]``
(:data:`TITOK_L32`, :data:`TITOK_B64`, :data:`TITOK_S128`) are the released settings.

``presets["valeoai"]`` (:data:`VALEOAI`) bundles valeoai v1.0's conventions; ``migbench sample
--preset valeoai`` and a suite's ``preset = "valeoai"`` expand it into ordinary overrides
(:func:`migbench.recipe.expand_preset`).

Neutral setting: this method *is* the baseline.
"""

from __future__ import annotations

import math
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
    COUNT_PRECISIONS,
    FLOAT32_SCHEDULES,
    GUIDANCE_SCHEDULES,
    SAMPLING_SCHEDULES,
    choice_temperature,
    guidance_scale,
    masked_after_steps,
    plan_from_counts,
)
from migbench.slots import categorical, choice_gumbel_max, lowest, masked_positions

CONFIDENCES = ("tempered", "untempered", "logit")
TOKEN_DRAWS = ("softmax", "choice-gumbel")
TEMPERATURE_ANNEALS = ("constant", "titok")


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
    choice_temperatures: tuple[float, ...] = knob(
        (), "Gumbel scale tau_k of the confidence at each step (AutoNAT's manual_temp); "
            "overrides choice_temperature and choice_anneal", described_at_default=False)
    temperatures: tuple[float, ...] = knob(
        (), "softmax temperature at each step (AutoNAT's manual_samp_temp), read by temperature_mode; "
            "overrides temperature", described_at_default=False)
    cfg_scales: tuple[float, ...] = knob(
        (), "CFG scale at each step (AutoNAT's manual_cfg), read by cfg_convention; overrides cfg_scale and "
            "cfg_schedule; a step at 0 runs no unconditional pass", described_at_default=False)
    count_precision: str = knob(
        "float64", "floor(N gamma) of the reveal counts: float64 (exact) or float32 (Google's JAX and open-muse's "
                   "torch arithmetic: T=18, N=256 masks 127 after step 11, not 128)", COUNT_PRECISIONS,
        described_at_default=False)
    decoded_confidence: str = knob(
        "inf", "confidence of already-decoded tokens: inf (Google, valeoai: never re-masked) or finite "
               "(open-muse, the self-guidance code: log(float32 max) = 88.72 plus tau Gumbel, re-maskable)",
        ("inf", "finite"), described_at_default=False)
    confidence: str = knob("tempered", "what the confidence scores before its Gumbel: tempered (log p of the "
                                       "softmax the token was drawn from: Google, valeoai), untempered "
                                       "(log_softmax of the guided logits before the temperature: AutoNAT) or "
                                       "logit (the drawn id's logit after guidance and temperature: TiTok)",
                           CONFIDENCES, described_at_default=False)
    token_draw: str = knob("softmax", "how tokens are drawn: softmax (categorical over the processed logits) or "
                                      "choice-gumbel (TiTok: argmax(l + tau_k G) at the step's choice "
                                      "temperature, greedy at tau_k = 0)", TOKEN_DRAWS, described_at_default=False)
    temperature_anneal: str = knob("constant", "softmax temperature over steps: constant, or titok (TiTok's "
                                               "softmax_temperature_annealing: temperature (0.5 + 0.8 (1 - (k+1)/T)))",
                                   TEMPERATURE_ANNEALS, described_at_default=False)
    cfg_power: float = knob(3.0, "exponent p of the power-cosine CFG ramp (1 - cos(pi (k/T)^p)) / 2 (TiTok's "
                                 "guidance_scale_pow)", described_at_default=False)
    cfg_unguided_pass: str = knob("skip", "a step whose CFG scale leaves the conditional logits alone (0; 1 in the "
                                          "muse convention): skip (no unconditional pass) or run (the pass runs, "
                                          "weighed by 0, as TiTok's power-cosine mode from step 0: NFE as upstream)",
                                  ("skip", "run"), described_at_default=False)

    def __post_init__(self) -> None:
        check_choices(self)
        if self.steps < 1:
            raise ValueError(f"maskgit.steps must be >= 1, got {self.steps}")
        if self.temperature <= 0:
            raise ValueError(f"maskgit.temperature must be > 0, got {self.temperature}")
        check_logit_scale("maskgit.temperature", self.temperature, logit_factor(self.temperature, self.temperature_mode))
        check_guidance_scale("maskgit.cfg_scale", self.cfg_scale)
        if self.count_precision == "float32" and not self.ratios and self.schedule not in FLOAT32_SCHEDULES:
            raise ValueError(f"maskgit.count_precision=float32 takes schedule {', '.join(FLOAT32_SCHEDULES)} "
                             f"(or explicit ratios), got {self.schedule!r}")
        if self.temperatures and self.temperature_anneal != "constant":
            raise ValueError("maskgit.temperatures and maskgit.temperature_anneal both set the temperature at each "
                             "step; keep one")
        if not 0.0 < self.cfg_power <= 100.0:
            raise ValueError(f"maskgit.cfg_power must lie in (0, 100], got {self.cfg_power}")
        for name in ("ratios", "choice_temperatures", "temperatures", "cfg_scales"):
            values = getattr(self, name)
            if values and len(values) != self.steps:
                raise ValueError(f"maskgit.{name} has {len(values)} values for {self.steps} steps")
        for k, tau in enumerate(self.choice_temperatures):
            if tau < 0:
                raise ValueError(f"maskgit.choice_temperatures[{k}] must be >= 0, got {tau}")
        for k, t in enumerate(self.temperatures):
            if t <= 0:
                raise ValueError(f"maskgit.temperatures[{k}] must be > 0, got {t}")
            check_logit_scale(f"maskgit.temperatures[{k}]", t, logit_factor(t, self.temperature_mode))
        for k, w in enumerate(self.cfg_scales):
            check_guidance_scale(f"maskgit.cfg_scales[{k}]", w)


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


UNLOCKMGM: dict[str, Any] = {
    "maskgit.schedule": "cosine",
    "maskgit.choice_anneal": "compound",
    "maskgit.decoded_confidence": "finite",
    "maskgit.count_precision": "float32",
}
"""The base sampler as UnlockMGM's (open-muse's) ``generate`` runs it for the self-guidance rows
(JiwanHur/UnlockMGM 33e139a, muse/modeling_transformer_toast.py and muse/sampling.py): cosine
reveal counts computed in float32 (F4: T = 18, N = 256, step 11 masks 127), the choice temperature
re-assigned every step as tau (1 - (k+1)/T) (``compound``), and decoded tokens scored
log(float32 max) + tau Gumbel, so at high tau they can be re-masked (F5). The conventions only:
the paper's settings (T = 18, tau0 25 at 256 px and 45 at 512 px, self-guidance s = 1) are set by
the suites."""


AUTONAT_T8: dict[str, Any] = {
    "maskgit.steps": 8,
    "maskgit.ratios": (0.9531645174140464, 0.8795409806037042, 0.7940230737075623, 0.745995860948045,
                       0.6249785820461957, 0.407321956652571, 0.260658917067054, 0.0),
    "maskgit.choice_temperatures": (2.404912789740805, 2.477616274962803, 1.191696577294597, 0.7685444738649722,
                                    1.0673489052089495, 0.9353720330515827, 0.7843839537838292, 0.0),
    "maskgit.temperatures": (2.8999037830310685, 1.867261830931786, 1.1443729673819831, 1.3796334226014182,
                             1.4699896959810144, 1.3760684112198358, 1.7082165405200722, 0.7133060703601533),
    "maskgit.temperature_mode": "divisor",
    "maskgit.cfg_scales": (0.0001, 0.0001, 0.0001, 0.9151274967591447, 1.6160182878189675, 1.1945509026838659,
                           1.38322370140345, 1.22678520936251),
    "maskgit.cfg_convention": "maskgit",
    "maskgit.confidence": "untempered",
}
"""AutoNAT-L's searched T = 8 strategy (Ni et al., "Revisiting Non-Autoregressive Transformers for
Efficient Image Synthesis", CVPR 2024): ``configs/AutoNAT_L-T8_strategy.yaml`` of
LeapLabTHU/ImprovedNAT @ 2ca9994 (byte-identical in GuotaoLiang/KA-MIG @ 0b4ceb1, whose
``generate_npz.py`` samples with it), read by ``libs/nat_misc.py`` ``generate`` (KA-MIG:
``generate_auto``) with ``cfg_nnet`` of ``train.py`` (KA-MIG: ``generate_npz.py``). Per step k of 8:

- mask ratio ``manual_ratios[k]`` (7 values, the last step 0): floor(256 r_k) stay masked,
  [244, 225, 203, 190, 159, 104, 66, 0] at N = 256 (``ratios``, last 0);
- Gumbel scale ``manual_temp[k]`` (7 values; upstream uses 0 at the last step, where every token
  is revealed and the noise decides nothing): ``choice_temperatures``, last 0;
- tokens ~ Categorical(logits / ``manual_samp_temp[k]``) (8 values): ``temperatures``, divisor;
- confidence log_softmax(logits)[token] + tau_k Gumbel with ``logits`` the guided but untempered
  logits: ``confidence = "untempered"``;
- logits = cond + s_k (cond - uncond), uncond = context 1000 (the null class), s_k =
  ``manual_cfg[k]`` (8 values): ``cfg_scales``, convention ``maskgit`` ((1 + w) c - w u, w = s).

NFE: upstream runs both passes at every step, also at s = 1e-4 (steps 0-2); here a non-zero scale
runs its pass too, so the strategy costs 16 passes per image, as upstream (a 0 in ``cfg_scales``
would skip a pass upstream still runs: fidelity finding F10, NFE bookkeeping only). Upstream
draws its Gumbel noise from numpy's global generator and its tokens from torch's: the same
distributions, not the same bits. Upstream clamps the masked count as max(1, min(masked - 1,
floor(256 r))); :func:`migbench.schedules.masked_after_steps` gives the same counts for this
list. Upstream's scripts export ``ACCELERATE_MIXED_PRECISION=fp16``, so its backbone passes run
under fp16 autocast (inferred: ``accelerator.prepare`` wraps the forward), with CFG in float32;
the precision here is the run's, not the preset's."""


TITOK_SAMPLER: dict[str, Any] = {
    "maskgit.schedule": "arccos",
    "maskgit.choice_anneal": "linear",
    "maskgit.token_draw": "choice-gumbel",
    "maskgit.confidence": "logit",
    "maskgit.temperature": 1.0,
    "maskgit.temperature_mode": "divisor",
    "maskgit.temperature_anneal": "titok",
    "maskgit.decoded_confidence": "inf",
}
"""TiTok's ``generate`` (bytedance/1d-tokenizer 942a96f, modeling/maskgit.py ``ImageBert.generate``,
as ``sample_imagenet_titok.py`` calls it for the released gFIDs): per step k of T, r = (k+1)/T,

- tau_k = tau0 (1 - r) (``randomize_temperature``, ``linear``);
- logits l = guided / (0.5 + 0.8 (1 - r)) (``softmax_temperature_annealing=True``, ``titok``);
- token = argmax(l + tau_k G) (``choice-gumbel``), confidence = l[token] + tau_k G' (``logit``),
  +inf at decoded tokens (``inf``);
- floor(N arccos(r) / (pi/2)) positions stay masked (``arccos``; upstream clamps to
  [1, masked - 1], which gives the same counts at the released N and T).

Upstream draws the Gumbel noise of every position and code from torch's global generator, here
only the masked rows from the batch's generator: the same distributions, not the same bits."""

TITOK_L32: dict[str, Any] = {**TITOK_SAMPLER, "maskgit.steps": 8, "maskgit.choice_temperature": 9.5,
                             "maskgit.cfg_scale": 4.5, "maskgit.cfg_schedule": "linear",
                             "maskgit.cfg_convention": "maskgit"}
"""TiTok-L-32's released setting (configs/infer/TiTok/titok_l32.yaml; gFID 2.77): T = 8, tau0 9.5,
linear CFG c + w (k/T) (c - u) with w 4.5, so step 0 runs no unconditional pass: 15 passes."""

TITOK_B64: dict[str, Any] = {**TITOK_L32, "maskgit.choice_temperature": 11.0, "maskgit.cfg_scale": 3.0}
"""TiTok-B-64's released setting (configs/infer/TiTok/titok_b64.yaml; gFID 2.48): T = 8, tau0 11,
linear CFG with w 3: 15 passes."""

TITOK_S128: dict[str, Any] = {**TITOK_SAMPLER, "maskgit.steps": 64, "maskgit.choice_temperature": 2.8,
                              "maskgit.cfg_scale": 6.9, "maskgit.cfg_schedule": "power-cosine",
                              "maskgit.cfg_convention": "muse", "maskgit.cfg_power": 3.0,
                              "maskgit.cfg_unguided_pass": "run"}
"""TiTok-S-128's released setting (configs/infer/TiTok/titok_s128.yaml; gFID 1.97): T = 64, tau0 2.8,
MDT's power-cosine CFG u + w_k (c - u) with w_k = 1 + (6.9 - 1)(1 - cos(pi (k/T)^3)) / 2. Upstream
runs both passes at every step, step 0 (w_0 = 1) included, so ``cfg_unguided_pass = run``: 128
passes (fidelity finding F10), the samples the same as with the pass skipped."""


@dataclass(frozen=True)
class RevealSchedule:
    """MaskGIT's schedule slot: reveal counts of the mask schedule on eMIGM's time grid (t_k, s_k),
    floor(N gamma) computed at ``precision`` (:func:`migbench.schedules.masked_after_steps`)."""

    steps: int
    schedule: str | tuple[float, ...]
    precision: str = "float64"

    def plan(self, num_tokens: int, generator: torch.Generator | None = None) -> list[StepInfo]:
        counts = masked_after_steps(self.schedule, self.steps, num_tokens, self.precision)
        return plan_from_counts(counts, self.steps, num_tokens)


def logit_factor(temperature: float, mode: str) -> float:
    """What softmax temperature ``temperature`` multiplies the logits by: 1/T (``divisor``) or T
    (``multiplier``)."""
    return 1.0 / temperature if mode == "divisor" else temperature


def annealed_temperature(logits: torch.Tensor, temperature: float, mode: str, info: StepInfo) -> torch.Tensor:
    """TiTok's softmax temperature annealing (1d-tokenizer ``ImageBert.generate`` with
    ``softmax_temperature_annealing=True``): T_k = temperature (0.5 + 0.8 (1 - (k+1)/T)), 1.2 at
    the first step of 8 and 0.5 at the last; logits (B, N, K) / T_k in the divisor mode (divided,
    as upstream divides), * T_k in the multiplier mode. Upstream has no base temperature (1 here)."""
    t = temperature * (0.5 + 0.8 * (1.0 - (info.step + 1) / info.num_steps))
    return logits / t if mode == "divisor" else logits * t


def per_step(values: tuple[float, ...], knob_name: str, info: StepInfo) -> float:
    """``values[k]`` at step k of a plan of T = ``len(values)`` steps; a one-line error when the
    plan of the schedule slot's holder has another T."""
    if info.num_steps != len(values):
        raise ValueError(f"maskgit.{knob_name} has {len(values)} values but the schedule runs "
                         f"{info.num_steps} steps")
    return values[info.step]


def guided_log_p(candidates: torch.Tensor, state: SampleState) -> torch.Tensor:
    """log_softmax(l)[candidate] (B, N) with l = ``state.guided`` (B, N, K), the guided logits
    before the temperature, at the m = ``masked_before`` masked positions, 0 elsewhere: AutoNAT's
    confidence (nat_misc.py ``generate``: ``torch.log_softmax(logits)`` gathered at the ids drawn
    from ``logits / samp_temp``). Only the masked rows are normalised, as in
    :func:`migbench.slots.categorical`."""
    (b, n, k), m = state.guided.shape, state.info.masked_before
    pos = masked_positions(state.masked, m)
    picked = state.guided.gather(1, pos[..., None].expand(b, m, k))
    logp = torch.log_softmax(picked, dim=-1).gather(-1, candidates.gather(1, pos)[..., None]).squeeze(-1)
    return torch.zeros((b, n), dtype=logp.dtype, device=logp.device).scatter(1, pos, logp)


def keep_decoded(candidates: torch.Tensor, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
    """MaskGIT's selector: the ``masked_after`` lowest-scoring *masked* positions stay masked."""
    scores = scores.masked_fill(~state.masked, float("inf"))
    return candidates.masked_fill(lowest(scores, state.info.masked_after), state.backbone.layout.mask_id)


DECODED_LOG_CONFIDENCE = math.log(torch.finfo(torch.float32).max)
"""log(float32 max) = 88.72: open-muse's confidence of a decoded token before the Gumbel noise."""


def remask_decoded(candidates: torch.Tensor, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
    """open-muse's selector (UnlockMGM ``generate_sg``, muse/sampling.py ``mask_by_random_topk``):
    decoded tokens score log(float32 max) = 88.72 plus the scorer's tau Gumbel there (``scores``
    holds 0 + tau g at decoded positions), and the ``masked_after`` lowest of *all* positions are
    masked, so a decoded token whose noise falls below about -88.72 / tau is re-masked (at tau0 =
    25 compound, steps 1-2 can; fidelity finding F5). Google's paper and code give decoded tokens
    +inf (:func:`keep_decoded`)."""
    scores = scores + (~state.masked).to(scores.dtype) * DECODED_LOG_CONFIDENCE
    return candidates.masked_fill(lowest(scores, state.info.masked_after), state.backbone.layout.mask_id)


class MaskGIT:
    """The base method: reveal schedule, temperature, confidence + annealed Gumbel, keep, CFG."""

    name = "maskgit"
    config_cls = MaskGITConfig
    trained = False
    # knobs that act only while this method holds the slot (a warning says when they do not)
    slot_knobs = {"schedule": ("steps", "schedule", "ratios", "count_precision"),
                  "selector": ("decoded_confidence",),
                  "token_sampler": ("token_draw",),
                  "scorer": ("choice_temperature", "choice_anneal", "choice_temperatures", "confidence")}
    # named bundles of overrides, expanded before a recipe is resolved (migbench.recipe.expand_preset)
    presets: dict[str, dict[str, Any]] = {"valeoai": VALEOAI, "autonat_t8": AUTONAT_T8, "unlockmgm": UNLOCKMGM,
                                          "titok_l32": TITOK_L32, "titok_b64": TITOK_B64, "titok_s128": TITOK_S128}

    @staticmethod
    def neutral_config() -> MaskGITConfig:
        return MaskGITConfig()

    @staticmethod
    def install(builder: SamplerBuilder, config: MaskGITConfig) -> None:
        name = MaskGIT.name
        schedule = config.ratios if config.ratios else config.schedule
        builder.claim("schedule", RevealSchedule(config.steps, schedule, config.count_precision), name, weak=True)
        builder.claim("selector", keep_decoded if config.decoded_confidence == "inf" else remask_decoded, name,
                      weak=True)

        def tau_at(info: StepInfo) -> float:
            if config.choice_temperatures:
                return per_step(config.choice_temperatures, "choice_temperatures", info)
            return choice_temperature(config.choice_temperature, info.step, info.num_steps, config.choice_anneal)

        if config.token_draw == "choice-gumbel":
            builder.claim("token_sampler", lambda logits, state: choice_gumbel_max(logits, state, tau_at(state.info)),
                          name, weak=True)
        else:
            builder.claim("token_sampler", categorical, name, weak=True)

        def confidence(candidates: torch.Tensor, logp: torch.Tensor, state: SampleState) -> torch.Tensor:
            if config.confidence == "untempered":
                logp = guided_log_p(candidates, state)
            elif config.confidence == "logit":
                logp = state.processed.gather(-1, candidates[..., None]).squeeze(-1)
            tau = tau_at(state.info)
            if tau == 0.0:
                return logp
            return logp + tau * gumbel(logp.shape, state.generator, logp.device)

        builder.claim("scorer", confidence, name, weak=True)
        if config.temperatures:
            factors = tuple(logit_factor(t, config.temperature_mode) for t in config.temperatures)
            builder.add_processor(lambda logits, state: logits * per_step(factors, "temperatures", state.info), name)
        elif config.temperature_anneal == "titok":
            builder.add_processor(lambda logits, state: annealed_temperature(
                logits, config.temperature, config.temperature_mode, state.info), name)
        elif config.temperature != 1.0:
            scale = logit_factor(config.temperature, config.temperature_mode)
            builder.add_processor(lambda logits, state: logits * scale, name)
        if config.cfg_scales or config.cfg_scale != 0.0 or config.cfg_convention == "muse":
            offset = 1.0 if config.cfg_convention == "muse" else 0.0

            def unconditional(ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return ids, torch.full_like(labels, NULL_LABEL)

            def scale_at(info: StepInfo) -> float:
                if config.cfg_scales:
                    return per_step(config.cfg_scales, "cfg_scales", info) - offset
                return guidance_scale(config.cfg_schedule, config.cfg_scale - offset, info.step, info.num_steps,
                                      config.cfg_power)

            builder.add_guidance(GuidanceTerm(name="cfg", owner=name, inputs=unconditional, scale_at=scale_at,
                                              run_unguided=config.cfg_unguided_pass == "run"))
