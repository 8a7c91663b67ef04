"""eMIGM: reveal probabilities, ancestral counts, interval boundaries, NFE of the released setting."""

import math

import pytest
import torch
from migbench.backbones.toy import toy
from migbench.methods.emigm import (
    CFG_SCHEDULES,
    AncestralSchedule,
    CFGIntervalConfig,
    host_generator,
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


def old_plan(schedule: AncestralSchedule, num_tokens: int, generator: torch.Generator) -> list[StepInfo]:
    """The plan before the host-sync removal, drawing from the batch generator (the reference)."""
    grid = time_grid(schedule.steps)
    infos, masked = [], num_tokens
    for k in range(schedule.steps):
        last = k == schedule.steps - 1
        p = transfer_probability(schedule.mask_schedule, grid[k], grid[k + 1], last)
        draws = torch.rand(masked, generator=generator, device=generator.device)
        count = masked if last else max(1, int((draws < p).sum()))
        infos.append(StepInfo(step=k, num_steps=schedule.steps, t=grid[k], s=grid[k + 1],
                              masked_before=masked, masked_after=masked - count, num_tokens=num_tokens))
        masked -= count
        if masked == 0:
            break
    return infos


@pytest.mark.parametrize("steps,mask_schedule", [(16, "exp"), (8, "cosine"), (64, "linear")])
def test_cpu_plan_is_unchanged(steps, mask_schedule) -> None:
    """On the CPU the counts still come from the batch generator: same plan, same state after it."""
    for seed in range(20):
        new, old = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        schedule = AncestralSchedule(steps, mask_schedule)
        assert schedule.plan(256, new) == old_plan(schedule, 256, old)
        assert torch.equal(torch.rand(4, generator=new), torch.rand(4, generator=old))


class AcceleratorGenerator:
    """Stands in for a CUDA generator: only ``device`` and ``initial_seed`` are read."""

    device = torch.device("cuda")

    def initial_seed(self) -> int:
        return 1234


def test_accelerator_counts_come_from_a_host_generator_with_the_batch_seed() -> None:
    host = host_generator(AcceleratorGenerator())
    assert host.device.type == "cpu" and host.initial_seed() == 1234
    cpu = torch.Generator().manual_seed(5)
    assert host_generator(cpu) is cpu
    plan = AncestralSchedule(16, "exp").plan(64, AcceleratorGenerator())
    assert plan == old_plan(AncestralSchedule(16, "exp"), 64, torch.Generator().manual_seed(1234))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_plan_leaves_the_device_stream_alone() -> None:
    cuda = torch.Generator(device="cuda").manual_seed(7)
    plan = AncestralSchedule(16, "exp").plan(256, cuda)
    assert plan == AncestralSchedule(16, "exp").plan(256, torch.Generator().manual_seed(7))
    untouched = torch.Generator(device="cuda").manual_seed(7)
    assert torch.equal(torch.rand(8, generator=cuda, device="cuda"),
                       torch.rand(8, generator=untouched, device="cuda"))


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
