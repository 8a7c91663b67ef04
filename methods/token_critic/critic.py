"""The Token-Critic network: a class-conditional transformer with one logit per token.

Same family as the backbone (:class:`migbench.backbones.transformer.MaskedTransformer`) with the
K-way head replaced by a 1-way head: ``critic(ids (B, N), labels (B,)) -> (B, N)`` logits of
"this token was sampled by the generator" (Lezama et al., ECCV 2022). Input ids are a complete
canvas (no mask tokens at sampling time).
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from migbench.backbones.transformer import MaskedTransformer, TransformerConfig
from torch import nn

from migbench.api import HookSet

CRITIC_CONFIG = TransformerConfig(width=192, depth=4, heads=6)


class TokenCritic(nn.Module):
    """``forward(ids (B, N), labels (B,)) -> fake logits (B, N)`` (float32)."""

    def __init__(self, config: TransformerConfig = CRITIC_CONFIG) -> None:
        super().__init__()
        self.config = config
        self.body = MaskedTransformer(config)
        self.body.head = nn.Linear(config.width, 1)
        nn.init.zeros_(self.body.head.bias)
        nn.init.trunc_normal_(self.body.head.weight, std=0.02)

    def describe(self) -> dict[str, object]:
        return {"kind": "token_critic", **asdict(self.config)}

    def forward(self, ids: torch.Tensor, labels: torch.Tensor, hooks: HookSet | None = None) -> torch.Tensor:
        return self.body(ids, labels, hooks, branch="critic").logits[..., 0].float()


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (Mann-Whitney U, ties halved)."""
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("AUROC needs both positive and negative labels")
    sorted_scores, order = scores.sort()
    _, group, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    ranks = torch.empty_like(scores)
    ranks[order] = ((ends - counts + 1 + ends) / 2.0)[group]  # tied scores share their mean rank
    u = float(ranks[labels].sum()) - positives * (positives + 1) / 2.0
    return u / (positives * negatives)
