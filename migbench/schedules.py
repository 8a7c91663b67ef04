"""Mask-ratio, reveal, temperature and guidance-scale schedules (pure functions, hand-checkable).

Time convention (eMIGM's): t in [0, 1], t = 1 is the fully masked canvas, gamma(t) is the
fraction of tokens masked at time t. MaskGIT writes gamma(r) with r = 1 - t the progress;
``cosine`` here, cos(pi/2 (1 - t)), is MaskGIT's cos(pi r / 2).

Step progress comes in three conventions over steps k = 0..T-1: Google's MaskGIT (k+1)/T (the
reveal counts, the Gumbel anneal ``linear``), MUSE/TiTok's k/T (the CFG ramp ``linear``), and
valeoai's k/(T-1) (``torch.linspace(0, 1, T)``: Maskgit-pytorch v1.0 ``sample``, also KA-MIG's
CFG ramp), which starts at 0 and reaches 1 at the last step (the ``*-valeoai`` values).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from migbench.guidance import StepInfo

_E5 = math.exp(5.0)

MASK_SCHEDULES: dict[str, Callable[[float], float]] = {
    "cosine": lambda t: math.cos(math.pi / 2 * (1.0 - t)),
    # valeoai's training mask ratio; as a *sampling* schedule (floor rule below) it is TiTok's
    # (1d-tokenizer maskgit.py), not valeoai's, which is ARCCOS_VALEOAI
    "arccos": lambda t: math.acos(1.0 - t) / (math.pi / 2),
    "linear": lambda t: t,
    "exp": lambda t: 1.0 - math.exp(-5.0 * t),
    "poly-0.5": lambda t: math.sqrt(t),
    "log": lambda t: math.log1p((_E5 - 1.0) * t) / 5.0,
}


ARCCOS_VALEOAI = "arccos-valeoai"
"""valeoai v1.0's own reveal rule (:func:`valeoai_reveal_counts`): a sampling schedule only, no gamma."""

GOOGLE_SCHEDULES: tuple[str, ...] = ("google-exp", "google-log", "google-pow2", "google-pow3")
"""Google MaskGIT's own ``exp``, ``log`` and ``powX`` (maskgit/libml/mask_schedule.py
``schedule``), which depend on N (``total_unknown``) and so are no gamma of :data:`MASK_SCHEDULES`
(whose ``exp``/``log`` are eMIGM's, fidelity finding F3): :func:`google_mask_ratio`."""

SAMPLING_SCHEDULES: tuple[str, ...] = (*MASK_SCHEDULES, ARCCOS_VALEOAI, *GOOGLE_SCHEDULES)
"""Names :func:`masked_after_steps` takes: every gamma of :data:`MASK_SCHEDULES` under MaskGIT's
floor rule, valeoai's normalised-increment rule, and Google's N-dependent schedules."""

COUNT_PRECISIONS = ("float64", "float32")
FLOAT32_SCHEDULES: tuple[str, ...] = ("cosine", "linear", "arccos", *GOOGLE_SCHEDULES)
"""The named schedules :func:`float32_masked` computes (the ones Google and open-muse name)."""


def google_mask_ratio(schedule: str, progress: float, num_tokens: int) -> float:
    """Google MaskGIT's mask ratio at progress r = (k+1)/T (mask_schedule.py ``schedule``, clipped
    to [1e-6, 1] as there): ``google-exp`` 1 - N^-(1-r) (``1 - exp2(-log2(N) (1 - r))``),
    ``google-log`` -log2(r) / log2(N), ``google-powX`` 1 - r^X. T=8, N=256: exp keeps
    [254, 252, 248, 240, 224, 192, 128, 0] masked, log [96, 64, 45, 32, 21, 13, 6, 0]
    (eMIGM's ``exp``/``log`` of :data:`MASK_SCHEDULES`: [252, ..., 118, 0], [249, ..., 151, 0])."""
    if schedule == "google-exp":
        ratio = 1.0 - 2.0 ** (-math.log2(num_tokens) * (1.0 - progress))
    elif schedule == "google-log":
        ratio = -math.log2(progress) / math.log2(num_tokens)
    elif schedule.startswith("google-pow"):
        ratio = 1.0 - progress ** float(schedule.removeprefix("google-pow"))
    else:
        raise ValueError(f"unknown Google schedule {schedule!r}; choose from {', '.join(GOOGLE_SCHEDULES)}")
    return min(1.0, max(1e-6, ratio))


def float32_masked(schedule: str, progress: float, num_tokens: int) -> int:
    """floor(N gamma) computed in float32 as open-muse (``torch.tensor(ratio)``, float32) and
    Google (JAX, float32) compute it: r rounded to float32, the schedule and the product in float32.
    Where cos(pi r / 2) = 1/2 exactly (r = 2/3) the float32 count is N/2 - 1 (fidelity finding F4:
    T=18, N=256, step 11: 127, float64 128). Takes cosine, linear and arccos (gamma(1 - r) of
    :data:`MASK_SCHEDULES`) and the Google schedules."""
    r = torch.tensor(progress, dtype=torch.float32)
    n = torch.tensor(float(num_tokens), dtype=torch.float32)
    if schedule == "cosine":
        ratio = torch.cos(r * math.pi * 0.5)
    elif schedule == "linear":
        ratio = 1.0 - r
    elif schedule == "arccos":
        ratio = torch.arccos(r) / (math.pi * 0.5)
    elif schedule == "google-exp":
        ratio = 1.0 - torch.exp2(-torch.log2(n) * (1.0 - r))
    elif schedule == "google-log":
        ratio = -torch.log2(r) / torch.log2(n)
    elif schedule.startswith("google-pow"):
        ratio = 1.0 - r ** float(schedule.removeprefix("google-pow"))
    else:
        raise ValueError(f"no float32 count for schedule {schedule!r}; float32 takes {', '.join(FLOAT32_SCHEDULES)}")
    if schedule.startswith("google-"):
        ratio = ratio.clamp(1e-6, 1.0)
    return int((n * ratio).floor())


def mask_ratio(schedule: str, t: float) -> float:
    """gamma(t): fraction of tokens masked at time t in [0, 1] under ``schedule``."""
    if schedule not in MASK_SCHEDULES:
        raise ValueError(f"unknown mask schedule {schedule!r}; choose from {sorted(MASK_SCHEDULES)}")
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must lie in [0, 1], got {t}")
    return min(1.0, max(0.0, MASK_SCHEDULES[schedule](t)))


ELBO_WEIGHTS: dict[str, Callable[[float], float]] = {
    "cosine": lambda t: math.pi / 2 * math.tan(math.pi / 2 * (1.0 - t)),
    "linear": lambda t: 1.0 / t,
    "exp": lambda t: 5.0 * math.exp(-5.0 * t) / (1.0 - math.exp(-5.0 * t)),
    "poly-0.5": lambda t: 0.5 / t,
    "log": lambda t: (_E5 - 1.0) / ((1.0 + (_E5 - 1.0) * t) * math.log1p((_E5 - 1.0) * t)),
}
ELBO_EPS = 1e-3


def elbo_weight(schedule: str, t: float) -> float:
    """The masked-diffusion ELBO weight gamma'(t)/gamma(t) at t~ = (1 - 1e-3) t + 1e-3 (eMIGM eq. / code)."""
    if schedule not in ELBO_WEIGHTS:
        raise ValueError(f"no ELBO weight for schedule {schedule!r}; choose from {sorted(ELBO_WEIGHTS)}")
    return ELBO_WEIGHTS[schedule]((1.0 - ELBO_EPS) * t + ELBO_EPS)


def masked_after_steps(schedule: str | Sequence[float], num_steps: int, num_tokens: int,
                       precision: str = "float64") -> list[int]:
    """How many tokens stay masked after each of ``num_steps`` steps (MaskGIT's rule).

    After step k (0-based) the count is floor(N * gamma(1 - (k+1)/T)), clamped so that every
    step reveals at least one token and at most all but one before the last step; the last step
    reveals everything (Google's parallel_decode; with ``arccos`` it is TiTok's rule).
    ``schedule`` is a name of :data:`MASK_SCHEDULES` or an explicit list of T mask ratios after
    each step (AutoNAT's per-step ratios; the last is taken as 0). Requires T <= N. Returns T
    counts, strictly decreasing, ending at 0. ``arccos-valeoai`` follows valeoai's own rule
    instead (:func:`valeoai_reveal_counts`), which may end before step T; the Google names
    (:data:`GOOGLE_SCHEDULES`) take floor(N :func:`google_mask_ratio`). ``precision="float32"``
    computes floor(N gamma) as upstream does (:func:`float32_masked`); float64 (the default) is
    the exact value.
    """
    if precision not in COUNT_PRECISIONS:
        raise ValueError(f"unknown count precision {precision!r}; choose from {', '.join(COUNT_PRECISIONS)}")
    if num_steps < 1 or num_steps > num_tokens:
        raise ValueError(f"num_steps must lie in [1, {num_tokens}] for {num_tokens} tokens, got {num_steps}")
    if schedule == ARCCOS_VALEOAI:
        return masked_after_reveals(valeoai_reveal_counts(num_steps, num_tokens), num_tokens)
    if isinstance(schedule, str) and precision == "float32":
        floors = [float32_masked(schedule, (k + 1) / num_steps, num_tokens) for k in range(num_steps)]
    elif isinstance(schedule, str) and schedule in GOOGLE_SCHEDULES:
        floors = [math.floor(num_tokens * google_mask_ratio(schedule, (k + 1) / num_steps, num_tokens))
                  for k in range(num_steps)]
    elif isinstance(schedule, str):
        floors = [math.floor(num_tokens * mask_ratio(schedule, 1.0 - (k + 1) / num_steps)) for k in range(num_steps)]
    else:
        ratios = [float(r) for r in schedule]
        if len(ratios) != num_steps or any(not 0.0 <= r <= 1.0 for r in ratios):
            raise ValueError(f"explicit ratios must be {num_steps} values in [0, 1], got {ratios}")
        floors = [math.floor(num_tokens * ratio) for ratio in ratios]
    counts, remaining = [], num_tokens
    for k, floor in enumerate(floors):
        steps_left = num_steps - k - 1
        remaining = 0 if steps_left == 0 else min(remaining - 1, max(steps_left, floor))
        counts.append(remaining)
    return counts


def valeoai_reveal_counts(num_steps: int, num_tokens: int) -> list[int]:
    """New tokens per step under valeoai v1.0's arccos schedule (Maskgit-pytorch 674ef1d,
    Trainer/vit.py ``adap_sche``, mode "arccos").

    With v_k = arccos(1 - k/(T-1)) / (pi/2) for k = 0..T-1 (``arccos(linspace(1, 0, T))``), step
    k reveals c_k = round(N v_k / sum_j v_j) tokens (round half to even, as ``torch.round``),
    raised to 1 where 0, and the last step takes the rest: c_{T-1} += N - sum_j c_j. Step 0
    reveals one token (v_0 = 0). The rounding can overshoot, leaving c_{T-1} <= 0; upstream's
    ``sample`` then stops once nothing is masked (:func:`masked_after_reveals`). T = 1 (a 0/0
    upstream) reveals all N. T=8, N=256: [1, 18, 26, 32, 38, 43, 48, 50]. Upstream computes in
    float32, here in float64: the counts agree for every T in [2, min(N, 256)] and N in
    {2, 3, 4, 5, 8, 12, 16, 24, 32}^2.
    """
    if num_steps == 1:
        return [num_tokens]
    weights = [math.acos(1.0 - k / (num_steps - 1)) / (math.pi / 2) for k in range(num_steps)]
    total = sum(weights)
    counts = [max(1, round(num_tokens * w / total)) for w in weights]
    counts[-1] += num_tokens - sum(counts)
    return counts


def masked_after_reveals(reveals: Sequence[int], num_tokens: int) -> list[int]:
    """Masked counts after each step that reveals ``reveals[k]`` tokens, at most what is still
    masked; the list ends at the first 0 (valeoai's ``sample``: ``t = min(t, mask.sum())``, and
    ``break`` once ``mask.sum() == 0``). valeoai's T=8, N=256 counts give
    [255, 237, 211, 179, 141, 98, 50, 0]."""
    out, masked = [], num_tokens
    for count in reveals:
        if masked == 0:
            break
        masked -= min(count, masked)
        out.append(masked)
    return out


TIME_EPS = 1e-5


def time_grid(num_steps: int) -> list[float]:
    """eMIGM's grid linspace(1, 1e-5, T + 1): step k goes from t_k to s_k = t_{k+1} > 0."""
    return [1.0 - (1.0 - TIME_EPS) * k / num_steps for k in range(num_steps + 1)]


def plan_from_counts(masked_after: Sequence[int], num_steps: int, num_tokens: int) -> list[StepInfo]:
    """The step plan of a schedule slot from its masked counts after each step: step k goes from
    t_k to s_k on :func:`time_grid` (T = ``num_steps``) and from ``masked_after[k - 1]`` (N at
    step 0) to ``masked_after[k]`` masked tokens. A plan may end before step T (eMIGM's, once
    nothing is masked): it has one step per count."""
    grid = time_grid(num_steps)
    before = [num_tokens, *masked_after[:-1]]
    return [StepInfo(step=k, num_steps=num_steps, t=grid[k], s=grid[k + 1], masked_before=before[k],
                     masked_after=after, num_tokens=num_tokens) for k, after in enumerate(masked_after)]


def progress_to_last(step: int, num_steps: int) -> float:
    """valeoai's step progress k/(T-1): 0 at the first step, 1 at the last (1 when T = 1, whose
    one step is the last; upstream divides by zero there)."""
    return step / (num_steps - 1) if num_steps > 1 else 1.0


CHOICE_ANNEALS = ("linear", "compound", "constant", "linear-valeoai")


def choice_temperature(tau0: float, step: int, num_steps: int, anneal: str = "linear") -> float:
    """Gumbel scale of the confidence at step k (0-based).

    ``linear`` (Google MaskGIT): tau0 * (1 - (k+1)/T). ``compound`` (open-muse, used by the
    self-guidance code): tau is multiplied by (1 - (j+1)/T) at every step j <= k, so it decays
    much faster (tau0=25, T=18: 23.6, 21.0, 17.5, ...). ``constant``: tau0.
    ``linear-valeoai`` (Maskgit-pytorch v1.0 ``sample``, ``randomize="linear"``):
    tau0 * (1 - k/(T-1)), full tau0 at step 0 and 0 at the last step (tau0=4.5, T=8:
    4.5, 3.857, 3.214, 2.571, 1.929, 1.286, 0.643, 0).
    """
    if anneal == "linear":
        return tau0 * (1.0 - (step + 1) / num_steps)
    if anneal == "compound":
        return tau0 * math.prod(1.0 - (j + 1) / num_steps for j in range(step + 1))
    if anneal == "constant":
        return tau0
    if anneal == "linear-valeoai":
        return tau0 * (1.0 - progress_to_last(step, num_steps))
    raise ValueError(f"unknown choice-temperature anneal {anneal!r}; choose from {', '.join(CHOICE_ANNEALS)}")


GUIDANCE_SCHEDULES = ("constant", "linear", "power-cosine", "linear-valeoai")


def guidance_scale(schedule: str, scale: float, step: int, num_steps: int, power: float = 3.0) -> float:
    """CFG scale s_k in the convention l = l_c + s (l_c - l_u), i.e. (1+s) l_c - s l_u.

    ``constant``: s. ``linear`` (MUSE/TiTok ramp): s * k / T, so step 0 is unguided and the
    last step gets s (T-1)/T. ``linear-valeoai`` (Maskgit-pytorch v1.0 ``sample`` and KA-MIG's
    ``generate``, ``linspace(0, s, T)``): s * k/(T-1), unguided at step 0 and s at the last step
    (s=3, T=8: 0, 3/7, 6/7, ..., 3). ``power-cosine`` (MDT, TiTok S-128):
    s * (1 - cos(pi (k/T)^p)) / 2 with p = ``power`` (3, TiTok's ``guidance_scale_pow``). A scale written in the MUSE/MAR convention u + w (c - u) is
    s = w - 1.
    """
    progress = step / num_steps
    if schedule == "constant":
        return scale
    if schedule == "linear":
        return scale * progress
    if schedule == "power-cosine":
        return scale * (1.0 - math.cos(math.pi * progress**power)) / 2.0
    if schedule == "linear-valeoai":
        return scale * progress_to_last(step, num_steps)
    raise ValueError(f"unknown guidance schedule {schedule!r}; choose from {', '.join(GUIDANCE_SCHEDULES)}")
