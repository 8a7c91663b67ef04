"""Mask-ratio, reveal, temperature and guidance-scale schedules (pure functions, hand-checkable).

Time convention (eMIGM's): t in [0, 1], t = 1 is the fully masked canvas, gamma(t) is the
fraction of tokens masked at time t. MaskGIT writes gamma(r) with r = 1 - t the progress;
``cosine`` here, cos(pi/2 (1 - t)), is MaskGIT's cos(pi r / 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from migbench.guidance import StepInfo

_E5 = math.exp(5.0)

MASK_SCHEDULES: dict[str, Callable[[float], float]] = {
    "cosine": lambda t: math.cos(math.pi / 2 * (1.0 - t)),
    "arccos": lambda t: math.acos(1.0 - t) / (math.pi / 2),
    "linear": lambda t: t,
    "exp": lambda t: 1.0 - math.exp(-5.0 * t),
    "poly-0.5": lambda t: math.sqrt(t),
    "log": lambda t: math.log1p((_E5 - 1.0) * t) / 5.0,
}


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


def masked_after_steps(schedule: str | Sequence[float], num_steps: int, num_tokens: int) -> list[int]:
    """How many tokens stay masked after each of ``num_steps`` steps (MaskGIT's rule).

    After step k (0-based) the count is floor(N * gamma(1 - (k+1)/T)), clamped so that every
    step reveals at least one token and at most all but one before the last step; the last step
    reveals everything. ``schedule`` is a name of :data:`MASK_SCHEDULES` or an explicit list of
    T mask ratios after each step (AutoNAT's per-step ratios; the last is taken as 0).
    Requires T <= N. Returns T counts, strictly decreasing, ending at 0.
    """
    if num_steps < 1 or num_steps > num_tokens:
        raise ValueError(f"num_steps must lie in [1, {num_tokens}] for {num_tokens} tokens, got {num_steps}")
    if isinstance(schedule, str):
        ratios = [mask_ratio(schedule, 1.0 - (k + 1) / num_steps) for k in range(num_steps)]
    else:
        ratios = [float(r) for r in schedule]
        if len(ratios) != num_steps or any(not 0.0 <= r <= 1.0 for r in ratios):
            raise ValueError(f"explicit ratios must be {num_steps} values in [0, 1], got {ratios}")
    counts, remaining = [], num_tokens
    for k, ratio in enumerate(ratios):
        steps_left = num_steps - k - 1
        if steps_left == 0:
            remaining = 0
        else:
            remaining = min(remaining - 1, max(steps_left, math.floor(num_tokens * ratio)))
        counts.append(remaining)
    return counts


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


def choice_temperature(tau0: float, step: int, num_steps: int, anneal: str = "linear") -> float:
    """Gumbel scale of the confidence at step k (0-based).

    ``linear`` (Google MaskGIT): tau0 * (1 - (k+1)/T). ``compound`` (open-muse, used by the
    self-guidance code): tau is multiplied by (1 - (j+1)/T) at every step j <= k, so it decays
    much faster (tau0=25, T=18: 23.6, 21.0, 17.5, ...). ``constant``: tau0.
    """
    if anneal == "linear":
        return tau0 * (1.0 - (step + 1) / num_steps)
    if anneal == "compound":
        return tau0 * math.prod(1.0 - (j + 1) / num_steps for j in range(step + 1))
    if anneal == "constant":
        return tau0
    raise ValueError(f"unknown choice-temperature anneal {anneal!r}; choose linear, compound or constant")


def guidance_scale(schedule: str, scale: float, step: int, num_steps: int) -> float:
    """CFG scale s_k in the convention l = l_c + s (l_c - l_u), i.e. (1+s) l_c - s l_u.

    ``constant``: s. ``linear`` (MUSE/TiTok ramp): s * k / T, so step 0 is unguided.
    ``power-cosine`` (MDT, TiTok S-128): s * (1 - cos(pi (k/T)^3)) / 2.
    A scale written in the MUSE/MAR convention u + w (c - u) is s = w - 1.
    """
    progress = step / num_steps
    if schedule == "constant":
        return scale
    if schedule == "linear":
        return scale * progress
    if schedule == "power-cosine":
        return scale * (1.0 - math.cos(math.pi * progress**3)) / 2.0
    raise ValueError(f"unknown guidance schedule {schedule!r}; choose constant, linear or power-cosine")
