"""Halton order against hand values and upstream's reveal counts."""

import numpy as np
import pytest
import torch
from migbench.backbones.toy1d import toy1d
from migbench.methods.halton import (
    HaltonSchedule,
    halton_order,
    halton_rank,
    halton_sequence,
    revealed_after_step,
)

from migbench.recipe import build_sampler, resolve
from migbench.schedules import time_grid


def test_van_der_corput() -> None:
    assert halton_sequence(2, 4) == [0.5, 0.25, 0.75, 0.125]
    assert np.allclose(halton_sequence(3, 4), [1 / 3, 2 / 3, 1 / 9, 4 / 9])


def test_order_covers_grid_and_starts_as_upstream() -> None:
    order = halton_order(8, 8)
    assert sorted(order) == list(range(64))
    # first points (1/2, 1/3), (1/4, 2/3), (3/4, 1/9) -> rows 4, 2, 6; cols 2, 5, 0
    assert order[:3] == (4 * 8 + 2, 2 * 8 + 5, 6 * 8 + 0)


def test_rank_is_the_inverse_of_the_order() -> None:
    rank = halton_rank((8, 8), torch.device("cpu"))
    assert rank.dtype == torch.int64 and rank.device.type == "cpu"
    assert [int(rank[p]) for p in halton_order(8, 8)] == list(range(64))


def test_reveal_counts() -> None:
    # r_k = max(k+1, int(64 (1 - arccos((k+1)/8) / (pi/2)))): ratio 1/8 -> 1 - 0.9202 = 0.0798 -> 5
    assert revealed_after_step(0, 8, 64) == 5
    assert revealed_after_step(7, 8, 64) == 64
    assert revealed_after_step(0, 64, 64) == 1


def test_plan_reveals_the_counts_on_the_time_grid() -> None:
    plan = HaltonSchedule(8).plan(64)
    after = [64 - revealed_after_step(k, 8, 64) for k in range(8)]
    assert [i.masked_after for i in plan] == after and [i.masked_before for i in plan] == [64, *after[:-1]]
    grid = time_grid(8)
    assert [(i.t, i.s) for i in plan] == list(zip(grid[:-1], grid[1:], strict=True))


def test_refused_on_1d_tokens() -> None:
    with pytest.raises(ValueError, match=r"^method halton needs image tokens on a 2-D grid .token_shape of length "
                                         r"2.; stack toy1d has token_shape \(16,\)$"):
        build_sampler(resolve("halton"), toy1d())
    build_sampler(resolve("halton", neutral=["halton"]), toy1d())  # the neutral config needs nothing


def test_revealed_tokens_kept_unless_resampling() -> None:
    from migbench.backbones.toy import toy

    stack = toy()
    for resample in (False, True):
        sampler = build_sampler(resolve("halton", {"halton.resample_revealed": resample}), stack)
        canvases: list = []

        def recording(c, s, st, original=sampler.selector, canvases=canvases):
            canvases.append(original(c, s, st))
            return canvases[-1]
        sampler.selector = recording
        sampler(torch.arange(4), torch.Generator().manual_seed(0))
        mask_id = stack.backbone.layout.mask_id
        changed = any(bool(((a != mask_id) & (b != a)).any()) for a, b in zip(canvases[:-1], canvases[1:], strict=True))
        assert changed == resample
