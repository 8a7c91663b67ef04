"""eMIGM: reveal probabilities, ancestral counts, interval boundaries, NFE of the released setting."""

import math

import pytest
import torch
from migbench.backbones.stacks import toy
from migbench.methods.emigm import (
    CFG_SCHEDULES,
    AncestralSchedule,
    CFGIntervalConfig,
    interval_scale,
    transfer_probability,
)

from migbench.generate import generate
from migbench.guidance import StepInfo
from migbench.recipe import resolve
from migbench.schedules import time_grid


def test_time_grid_is_linspace_to_eps() -> None:
    grid = time_grid(4)
    assert grid[0] == 1.0 and grid[-1] == pytest.approx(1e-5)
    assert grid[2] == pytest.approx(1 - 0.5 * (1 - 1e-5))


@pytest.mark.parametrize("schedule,expected", [
    ("linear", 0.5),                                              # 1 - 0.5/1
    ("cosine", 1 - math.cos(math.pi / 4)),                        # 1 - cos(pi/4)/cos(0)
    ("exp", 1 - (1 - math.exp(-2.5)) / (1 - math.exp(-5))),       # 0.075859
    ("poly-0.5", 1 - math.sqrt(0.5)),
    ("log", 1 - math.log(1 + (math.e**5 - 1) * 0.5) / 5),
])
def test_transfer_probability(schedule, expected) -> None:
    assert transfer_probability(schedule, 1.0, 0.5, last=False) == pytest.approx(expected, rel=1e-9)
    assert transfer_probability(schedule, 0.3, 0.1, last=True) == 1.0


def test_ancestral_counts_follow_the_probabilities() -> None:
    reveals = []
    for seed in range(300):
        plan = AncestralSchedule(2, "linear").plan(64, torch.Generator().manual_seed(seed))
        assert plan[-1].masked_after == 0 and all(i.masked_before > i.masked_after for i in plan)
        reveals.append(64 - plan[0].masked_after)
    # p = 1 - s/t = 0.499995 at the first of two steps: mean 32, sd of the mean 4/sqrt(300)
    assert sum(reveals) / len(reveals) == pytest.approx(32.0, abs=1.0)


def test_at_least_one_reveal_per_step() -> None:
    plan = AncestralSchedule(64, "exp").plan(64, torch.Generator().manual_seed(0))
    assert all(i.masked_before - i.masked_after >= 1 for i in plan)


def info_at(s: float, masked_after: int = 32) -> StepInfo:
    return StepInfo(step=0, num_steps=16, t=min(1.0, s + 0.1), s=s, masked_before=40,
                    masked_after=masked_after, num_tokens=64)


def test_interval_is_open_at_t_min_closed_at_t_max() -> None:
    scale = interval_scale(lambda info: 3.0, CFGIntervalConfig(t_min=0.1, t_max=0.3))
    assert scale(info_at(0.1)) == 0.0
    assert scale(info_at(0.1000001)) == 3.0
    assert scale(info_at(0.3)) == 3.0
    assert scale(info_at(0.3000001)) == 0.0


def test_scale_schedules_use_revealed_fraction() -> None:
    config = CFGIntervalConfig(t_min=0.0, t_max=1.0, scale_schedule="power")
    assert interval_scale(lambda info: 2.0, config)(info_at(0.5, masked_after=32)) == pytest.approx(2.0 * 0.25)
    assert CFG_SCHEDULES["exp"](1.0) == pytest.approx(1 - math.exp(-5))
    assert CFG_SCHEDULES["cosine"](0.0) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="t_min < t_max"):
        CFGIntervalConfig(t_min=0.5, t_max=0.2)


@pytest.mark.parametrize("methods", [["emigm", "cfg_interval"], ["cfg_interval"]])
def test_released_setting_costs_19_passes(methods) -> None:
    """16 steps, interval (0.1, 0.3]: guidance at s = 0.25, 0.1875, 0.125 only -> 16 + 3."""
    steps = "emigm.steps" if "emigm" in methods else "maskgit.steps"
    overrides = {"maskgit.cfg_scale": 4.0, "maskgit.cfg_convention": "muse", steps: 16}
    result = generate(toy(), resolve(methods, overrides), 4, 0, batch_size=4, progress=False)
    assert result.nfe_per_image["backbone"] == 19


def test_emigm_conflicts_with_halton() -> None:
    from migbench.sampler import SlotConflictError

    with pytest.raises(SlotConflictError, match="'emigm' and 'halton'|'halton' and 'emigm'"):
        generate(toy(), resolve(["emigm", "halton"]), 2, 0, batch_size=2, progress=False)
