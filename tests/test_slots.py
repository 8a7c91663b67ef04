"""Slot building blocks: the static-shape categorical sampler is bit-identical to boolean indexing."""

from __future__ import annotations

import pytest
import torch

from migbench.guidance import StepInfo
from migbench.sampler import SampleState
from migbench.slots import categorical, gumbel_max, masked_positions


def categorical_by_boolean_indexing(logits: torch.Tensor, state: SampleState) -> tuple[torch.Tensor, torch.Tensor]:
    """The implementation before the host-sync removal (SAMPLER_VERSION 2), kept as the reference."""
    masked = state.masked
    logp = torch.log_softmax(logits[masked], dim=-1)
    chosen = gumbel_max(logp, state.generator)
    tokens = state.ids.masked_scatter(masked, chosen)
    out = torch.zeros(masked.shape, dtype=logp.dtype, device=logp.device)
    return tokens, out.masked_scatter(masked, logp.gather(-1, chosen[:, None]).squeeze(-1))


def random_state(b: int, n: int, k: int, m: int, seed: int, generator_seed: int) -> SampleState:
    """A state whose rows each hold exactly ``m`` masked positions at random places (mask id k)."""
    gen = torch.Generator().manual_seed(seed)
    masked = torch.zeros(b, n, dtype=torch.bool)
    masked.scatter_(1, torch.rand(b, n, generator=gen).argsort(dim=1)[:, :m], True)
    ids = torch.randint(0, k, (b, n), generator=gen).masked_fill(masked, k)
    info = StepInfo(step=0, num_steps=1, t=1.0, s=0.0, masked_before=m, masked_after=0, num_tokens=n)
    return SampleState(ids=ids, masked=masked, labels=torch.zeros(b, dtype=torch.long), info=info,
                       generator=torch.Generator().manual_seed(generator_seed), backbone=torch.nn.Module(),
                       nfe={})


@pytest.mark.parametrize("b,n,k,m", [(1, 64, 16, 64), (5, 64, 16, 37), (7, 64, 512, 1), (4, 256, 1024, 200),
                                     (3, 10, 1024, 0), (250, 64, 512, 13)])
@pytest.mark.parametrize("seed", [0, 1])
def test_categorical_is_bit_identical_to_boolean_indexing(b, n, k, m, seed) -> None:
    gen = torch.Generator().manual_seed(100 + seed)
    logits = torch.randn(b, n, k, generator=gen) * 8.0
    logits[0, 0, : k // 2] = 40.0  # ties and large values: the argmax must pick the same index
    new_state, old_state = (random_state(b, n, k, m, seed, generator_seed=seed) for _ in range(2))
    tokens, logp = categorical(logits, new_state)
    ref_tokens, ref_logp = categorical_by_boolean_indexing(logits, old_state)
    assert torch.equal(tokens, ref_tokens)
    assert torch.equal(logp.view(torch.int32), ref_logp.view(torch.int32))  # bit for bit
    # the generator advanced by the same draws: the next noise is the same too
    assert torch.equal(torch.rand(3, generator=new_state.generator), torch.rand(3, generator=old_state.generator))


def test_masked_positions_ascend_in_row_major_order() -> None:
    masked = torch.tensor([[False, True, True, False, True], [True, True, False, True, False]])
    assert masked_positions(masked, 3).tolist() == [[1, 2, 4], [0, 1, 3]]


def test_unequal_masked_counts_fail_loudly() -> None:
    state = random_state(2, 8, 4, 3, seed=0, generator_seed=0)
    state.masked[0, state.masked[0].int().argmin()] = True  # row 0 now holds 4
    with pytest.raises(RuntimeError, match="exactly 3 masked positions"):
        categorical(torch.randn(2, 8, 4), state)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_categorical_is_bit_identical_to_boolean_indexing_on_cuda() -> None:
    logits = torch.randn(64, 256, 1024, generator=torch.Generator().manual_seed(0)).cuda() * 8.0
    states = [random_state(64, 256, 1024, 100, seed=0, generator_seed=0) for _ in range(2)]
    for state in states:
        state.ids, state.masked = state.ids.cuda(), state.masked.cuda()
        state.generator = torch.Generator(device="cuda").manual_seed(3)
    tokens, logp = categorical(logits, states[0])
    ref_tokens, ref_logp = categorical_by_boolean_indexing(logits, states[1])
    assert torch.equal(tokens, ref_tokens) and torch.equal(logp.view(torch.int32), ref_logp.view(torch.int32))
