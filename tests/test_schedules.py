"""Schedules against hand-computed values."""

import math

import pytest

from migbench.schedules import (
    choice_temperature,
    guidance_scale,
    mask_ratio,
    masked_after_steps,
    plan_from_counts,
    time_grid,
)


def test_cosine_counts_t8_n64() -> None:
    # floor(64 cos(pi/2 (k+1)/8)) for k = 0..6, then 0
    assert masked_after_steps("cosine", 8, 64) == [62, 59, 53, 45, 35, 24, 12, 0]


def test_linear_and_arccos_counts() -> None:
    assert masked_after_steps("linear", 4, 64) == [48, 32, 16, 0]
    # arccos(1 - t)/(pi/2) at t = 0.75, 0.5, 0.25: 0.8391, 0.6667, 0.4601
    assert masked_after_steps("arccos", 4, 64) == [53, 42, 29, 0]
    # "arccos" is TiTok's floor rule, not valeoai's (fidelity finding F2: T=8, N=256)
    assert masked_after_steps("arccos", 8, 256) == [235, 214, 193, 170, 145, 117, 82, 0]
    assert masked_after_steps("arccos-valeoai", 8, 256) == [255, 237, 211, 179, 141, 98, 50, 0]


def test_exp_counts() -> None:
    # 1 - e^(-5 t) at t = 2/3, 1/3: 0.9643, 0.8111
    assert masked_after_steps("exp", 3, 10) == [9, 8, 0]


def test_every_step_reveals_at_least_one_and_last_reveals_all() -> None:
    assert masked_after_steps((1.0, 1.0, 0.0), 3, 10) == [9, 8, 0]
    assert masked_after_steps((0.0, 0.0, 0.0), 3, 10) == [2, 1, 0]
    for name in ("cosine", "arccos", "linear", "exp", "poly-0.5", "log", "arccos-valeoai"):
        for steps in (1, 2, 7, 16, 44, 64):
            counts = masked_after_steps(name, steps, 64)
            before = [64, *counts[:-1]]
            assert counts[-1] == 0
            assert all(b - a >= 1 for b, a in zip(before, counts, strict=False))


def test_plan_from_counts_chains_the_counts_on_the_time_grid() -> None:
    plan = plan_from_counts([48, 32, 16, 0], 4, 64)
    assert [(i.step, i.num_steps, i.num_tokens) for i in plan] == [(k, 4, 64) for k in range(4)]
    assert [(i.masked_before, i.masked_after) for i in plan] == [(64, 48), (48, 32), (32, 16), (16, 0)]
    grid = time_grid(4)
    assert [(i.t, i.s) for i in plan] == list(zip(grid[:-1], grid[1:], strict=True))
    early = plan_from_counts([10, 0], 4, 64)  # eMIGM's plan ends once nothing is masked
    assert len(early) == 2 and early[1].num_steps == 4 and (early[1].t, early[1].s) == (grid[1], grid[2])


def test_bad_schedule_inputs() -> None:
    with pytest.raises(ValueError, match="unknown mask schedule"):
        masked_after_steps("cosin", 4, 64)
    with pytest.raises(ValueError, match="num_steps"):
        masked_after_steps("cosine", 65, 64)
    with pytest.raises(ValueError, match="explicit ratios"):
        masked_after_steps((0.5, 0.2), 3, 64)
    with pytest.raises(ValueError, match="t must lie"):
        mask_ratio("linear", 1.5)


def test_mask_ratio_endpoints() -> None:
    assert mask_ratio("cosine", 1.0) == pytest.approx(1.0)
    assert mask_ratio("cosine", 0.0) == pytest.approx(0.0, abs=1e-12)
    assert mask_ratio("exp", 1.0) == pytest.approx(1 - math.exp(-5))
    assert mask_ratio("log", 1.0) == pytest.approx(1.0)


def test_choice_temperature_anneals() -> None:
    assert choice_temperature(4.5, 0, 8) == pytest.approx(4.5 * 7 / 8)
    assert choice_temperature(4.5, 3, 8) == pytest.approx(4.5 * 4 / 8)
    assert choice_temperature(4.5, 7, 8) == 0.0
    # open-muse compounding decay: 25, T=18 -> 23.6, 21.0, 17.5, 13.6 (reference note)
    values = [choice_temperature(25.0, k, 18, "compound") for k in range(4)]
    assert [round(v, 1) for v in values] == [23.6, 21.0, 17.5, 13.6]
    assert choice_temperature(2.0, 5, 8, "constant") == 2.0
    # valeoai: tau0 (1 - k/(T-1)), full at step 0, 0 at the last
    assert choice_temperature(4.5, 0, 8, "linear-valeoai") == 4.5
    assert choice_temperature(4.5, 7, 8, "linear-valeoai") == 0.0
    with pytest.raises(ValueError):
        choice_temperature(1.0, 0, 8, "cosine")


def test_guidance_scale_schedules() -> None:
    assert guidance_scale("constant", 2.0, 3, 8) == 2.0
    assert guidance_scale("linear", 2.0, 0, 8) == 0.0
    assert guidance_scale("linear", 2.0, 4, 8) == pytest.approx(1.0)
    assert guidance_scale("linear-valeoai", 2.0, 0, 8) == 0.0
    assert guidance_scale("linear-valeoai", 2.0, 7, 8) == 2.0  # reaches w at the last step (k/(T-1))
    assert guidance_scale("power-cosine", 2.0, 0, 8) == 0.0
    # (1 - cos(pi * 0.5^3)) / 2 = 0.03806
    assert guidance_scale("power-cosine", 2.0, 4, 8) == pytest.approx(2.0 * 0.0380602, rel=1e-5)
    with pytest.raises(ValueError):
        guidance_scale("cubic", 1.0, 0, 8)


@pytest.mark.parametrize("schedule,expected", [
    # gamma'/gamma at t~ = 0.999 * 0.5 + 0.001 = 0.5005
    ("linear", 1.998002), ("cosine", 1.568331), ("exp", 0.445911), ("poly-0.5", 0.999001), ("log", 0.456892),
])
def test_elbo_weights(schedule, expected) -> None:
    from migbench.schedules import elbo_weight

    assert elbo_weight(schedule, 0.5) == pytest.approx(expected, rel=1e-5)
