"""Masked-token training, shared by every trainer: the training masks, the masked-token loss
and the fixed held-out validation.

A model here is anything called like a backbone, ``model(ids (B, N), labels (B,), branch=...)``
returning a :class:`~migbench.api.Prediction` with ``model.layout.mask_id``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from migbench.precision import autocast
from migbench.schedules import MASK_SCHEDULES


def sample_times(batch: int, t_min: float, generator: torch.Generator) -> torch.Tensor:
    """t (B,) ~ U(0, 1) clamped below at ``t_min`` (eMIGM's clamp_t_min)."""
    return torch.rand(batch, generator=generator).clamp_min(t_min)


def sample_mask(batch: int, num_tokens: int, schedule: str, t_min: float,
                generator: torch.Generator, t: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N) bool training mask: per row ceil(gamma(t) N) random positions (at least one)."""
    gamma = MASK_SCHEDULES[schedule]
    t = sample_times(batch, t_min, generator) if t is None else t
    counts = torch.tensor([min(num_tokens, max(1, math.ceil(gamma(float(v)) * num_tokens))) for v in t])
    ranks = torch.rand(batch, num_tokens, generator=generator).argsort(dim=1).argsort(dim=1)
    return ranks < counts[:, None]


def masked_loss(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor,
                mask: torch.Tensor, label_smoothing: float, weights: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over the masked positions of ``mask`` (B, N), and accuracy there.

    ``weights`` (B,) scale each sample's tokens (ELBO weighting); the sum is divided by the
    number of masked tokens, so unit weights give the plain mean.
    """
    inputs = ids.masked_fill(mask, model.layout.mask_id)
    logits = model(inputs, labels, branch="train").logits.float()
    per_token = F.cross_entropy(logits[mask], ids[mask], label_smoothing=label_smoothing, reduction="none")
    if weights is not None:
        per_token = per_token * weights[:, None].expand_as(mask)[mask]
    accuracy = (logits[mask].argmax(-1) == ids[mask]).float().mean()
    return per_token.mean(), accuracy


VALIDATION_SEED = 1234  # the held-out masks every validation number is measured with
VALIDATION_BATCH = 1000


def validation_masks(rows: int, num_tokens: int, schedule: str = "cosine", t_min: float = 0.0
                     ) -> Iterator[tuple[slice, torch.Tensor]]:
    """The fixed held-out masks: (row slice, mask (b, N) bool) per batch of ``VALIDATION_BATCH`` rows.

    Drawn from one generator (``VALIDATION_SEED``) at the full batch size and cut to the rows left,
    so the masks of the first r rows do not depend on how many rows follow: every caller scoring a
    prefix of the same maps sees the same masks.
    """
    gen = torch.Generator().manual_seed(VALIDATION_SEED)
    for start in range(0, rows, VALIDATION_BATCH):
        mask = sample_mask(VALIDATION_BATCH, num_tokens, schedule, t_min, gen)
        stop = min(start + VALIDATION_BATCH, rows)
        yield slice(start, stop), mask[:stop - start]


@torch.no_grad()
def validation_metrics(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor,
                       schedule: str, t_min: float, precision: str) -> dict[str, float]:
    """Masked-token loss (no smoothing) and accuracy on held-out maps (M, N), with
    :func:`validation_masks` of ``schedule`` and ``t_min``; each batch's per-token mean is weighted by its rows. Runs on the
    model's device under ``precision`` autocast (a trainer passes the precision it trained in)."""
    model.eval()
    device = next(model.parameters()).device
    total_loss = total_acc = 0.0
    with autocast(precision, device):
        for rows, mask in validation_masks(len(ids), ids.shape[1], schedule, t_min):
            x, y = ids[rows].to(device), labels[rows].to(device)
            loss, acc = masked_loss(model, x, y, mask.to(device), 0.0)
            total_loss += float(loss) * len(x)
            total_acc += float(acc) * len(x)
    return {"val_masked_loss": round(total_loss / len(ids), 4),
            "val_masked_accuracy": round(total_acc / len(ids), 4)}
