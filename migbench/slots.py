"""Slot building blocks shared by several methods (token sampling, lowest-k selection)."""

from __future__ import annotations

import torch

from migbench.rng import gumbel
from migbench.sampler import SampleState


def gumbel_max(logp: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One sample per row of log-probabilities (..., K) by Gumbel-max: argmax(logp + G).

    G is drawn on the generator's device and moved to ``logp``'s: a sampler's batch generator
    lives with its logits (no move), a trainer's step generator on the CPU (the same draws on
    every device)."""
    return (logp + gumbel(logp.shape, generator, generator.device).to(logp.device)).argmax(dim=-1)


def masked_positions(masked: torch.Tensor, count: int) -> torch.Tensor:
    """Positions (B, count) of the masked entries of ``masked`` (B, N), ascending in each row.

    Every row must hold exactly ``count`` masked entries (true of every sampler: the schedule is
    shared by the batch, and every selector leaves ``masked_after`` masked); a static shape, so
    no host sync. The row-major order is that of boolean indexing ``x[masked]``. The invariant
    is checked by ``torch._assert_async`` (no host sync on CUDA)."""
    torch._assert_async((masked.sum(dim=1) == count).all(),
                        f"every row must hold exactly {count} masked positions")
    return masked.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :count]


def categorical(logits: torch.Tensor, state: SampleState) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ids at the masked positions from softmax(logits (B, N, K)) by Gumbel-max.

    Returns ids (B, N) (kept ids elsewhere) and the log-probability of each sampled id (B, N)
    (0 elsewhere). Only the ``m = state.info.masked_before`` masked positions of each row are
    computed, gathered as (B * m, K) rows in row-major order: the same rows, in the same order,
    as ``logits[masked]``, so the Gumbel noise (B * m, K) and the samples are bit-identical to
    boolean indexing, without its data-dependent shape (a host sync per step)."""
    (b, n, k), m = logits.shape, state.info.masked_before
    pos = masked_positions(state.masked, m)
    picked = logits.gather(1, pos[..., None].expand(b, m, k)).reshape(b * m, k)
    logp = torch.log_softmax(picked, dim=-1)
    chosen = gumbel_max(logp, state.generator)
    chosen_logp = logp.gather(-1, chosen[:, None]).view(b, m)
    tokens = state.ids.scatter(1, pos, chosen.view(b, m))
    return tokens, torch.zeros((b, n), dtype=logp.dtype, device=logp.device).scatter(1, pos, chosen_logp)


def choice_gumbel_max(logits: torch.Tensor, state: SampleState, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TiTok's token draw at the masked positions: argmax(l + tau G) over logits l (B, N, K), the
    Gumbel G at the step's choice temperature tau (1d-tokenizer ``ImageBert.generate``:
    ``add_gumbel_noise(logits, annealed_temp).argmax(-1)``), i.e. a sample of softmax(l / tau),
    the argmax at tau = 0 (the noise is drawn all the same, so later draws do not depend on tau).

    Returns ids (B, N) (kept ids elsewhere) and log_softmax(l) of each drawn id (B, N) (0 elsewhere),
    from the same masked rows in the same order as :func:`categorical`."""
    (b, n, k), m = logits.shape, state.info.masked_before
    pos = masked_positions(state.masked, m)
    picked = logits.gather(1, pos[..., None].expand(b, m, k)).reshape(b * m, k)
    noise = gumbel(picked.shape, state.generator, state.generator.device).to(picked.device)
    chosen = (picked + tau * noise).argmax(dim=-1)
    chosen_logp = torch.log_softmax(picked, dim=-1).gather(-1, chosen[:, None]).view(b, m)
    tokens = state.ids.scatter(1, pos, chosen.view(b, m))
    return tokens, torch.zeros((b, n), dtype=chosen_logp.dtype, device=logits.device).scatter(1, pos, chosen_logp)


def categorical_everywhere(logits: torch.Tensor, state: SampleState) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`categorical` but at every position (for samplers that rewrite revealed tokens)."""
    logp = torch.log_softmax(logits, dim=-1)
    tokens = gumbel_max(logp, state.generator)
    return tokens, logp.gather(-1, tokens[..., None]).squeeze(-1)


def lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """(B, N) bool marking the ``count`` lowest scores of each row."""
    out = torch.zeros_like(scores, dtype=torch.bool)
    if count > 0:
        out.scatter_(1, scores.topk(count, dim=1, largest=False).indices, True)
    return out
