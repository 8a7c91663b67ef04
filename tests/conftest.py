"""Shared test helpers."""

import pytest
import torch


@pytest.fixture
def first_step_logits():
    """``first_step_logits(sampler, labels)`` runs one batch and returns the processed logits
    (B, N, K) the token sampler received at the first step."""
    def run(sampler, labels: torch.Tensor) -> torch.Tensor:
        seen = []
        original = sampler.token_sampler

        def record(logits, state):
            seen.append(logits)
            return original(logits, state)
        sampler.token_sampler = record
        sampler(labels, torch.Generator().manual_seed(0))
        return seen[0]
    return run
