"""Slot building blocks shared by several methods (token sampling, lowest-k selection)."""

from __future__ import annotations

import torch

from migbench.rng import gumbel
from migbench.sampler import SampleState


def gumbel_max(logp: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One sample per row of log-probabilities (..., K) by Gumbel-max: argmax(logp + G)."""
    return (logp + gumbel(logp.shape, generator, logp.device)).argmax(dim=-1)


def categorical(logits: torch.Tensor, state: SampleState) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ids at the masked positions from softmax(logits (B, N, K)) by Gumbel-max.

    Returns ids (B, N) (kept ids elsewhere) and the log-probability of each sampled id (B, N)
    (0 elsewhere). Only masked rows are computed: the visible ones are never used.
    """
    masked = state.masked
    logp = torch.log_softmax(logits[masked], dim=-1)
    chosen = gumbel_max(logp, state.generator)
    tokens = state.ids.masked_scatter(masked, chosen)
    out = torch.zeros(masked.shape, dtype=logp.dtype, device=logp.device)
    return tokens, out.masked_scatter(masked, logp.gather(-1, chosen[:, None]).squeeze(-1))


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
