"""The Token-Critic network: a class-conditional transformer with one logit per token.

Same family as the backbone (:class:`migbench.backbones.fmnist.transformer.MaskedTransformer`) with the
K-way head replaced by a 1-way head: ``critic(ids (B, N), labels (B,)) -> (B, N)`` logits of
"this token was sampled by the generator" (Lezama et al., ECCV 2022). Input ids are a complete
canvas (no mask tokens at sampling time).

The paper's critic is a transformer of the generator's size. ``TokenCritic.from_generator``
builds that and starts its body from the generator's weights (a new 1-logit head): our choice,
close to lucidrains' ``SelfCritic`` (a critic head on the generator's own features). A smaller
critic trained from scratch (an earlier version: width 192, 4 blocks, 600 steps, commit 8234ad6)
learned mostly the canvas's mask ratio here: pooled AUROC 0.68 but within-canvas AUROC 0.52 (see
:func:`breakdown`).
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from migbench.backbones.fmnist.transformer import MaskedTransformer, TransformerConfig
from torch import nn

from migbench.api import HookSet


class TokenCritic(nn.Module):
    """``forward(ids (B, N), labels (B,)) -> fake logits (B, N)`` (float32)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.body = MaskedTransformer(config)
        self.body.head = nn.Linear(config.width, 1)
        nn.init.zeros_(self.body.head.bias)
        nn.init.trunc_normal_(self.body.head.weight, std=0.02)

    @staticmethod
    def from_generator(generator: MaskedTransformer) -> TokenCritic:
        """A critic of the generator's size whose body starts from the generator's weights."""
        critic = TokenCritic(generator.config)
        body = {k: v for k, v in generator.state_dict().items() if not k.startswith("head.")}
        missing, unexpected = critic.body.load_state_dict(body, strict=False)
        if unexpected or set(missing) != {"head.weight", "head.bias"}:
            raise ValueError(f"generator and critic bodies differ: missing {missing}, unexpected {unexpected}")
        return critic

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


RATIO_BINS = (0.0, 0.25, 0.5, 0.75, 1.0)


def breakdown(scores: torch.Tensor, mask: torch.Tensor, differs: torch.Tensor,
              bins: tuple[float, ...] = RATIO_BINS) -> dict[str, object]:
    """Where a critic's AUROC comes from, for ``scores`` (M, N) against the ``mask`` label (M, N).

    The pooled AUROC mixes canvases of every mask ratio, but sampling only ranks tokens *within*
    a canvas, and a sampled token equal to the ground truth is, as a token, a real one:

    - ``pooled``: AUROC over all tokens; ``within_canvas``: mean AUROC over canvases holding
      both labels (what the selector uses); ``by_ratio``: pooled AUROC per mask-ratio bin;
    - ``sampled_equal``: fraction d of sampled tokens equal to x0 (``differs`` False), and
      ``oracle`` = 0.5 + (1 - d)/2, a critic that knows every differing token and ties the rest;
    - ``differing_only``: AUROC without the equal positives; ``against_differs``: the same scores
      against the "differs" label.
    """
    within = [auroc(s, m) for s, m in zip(scores, mask, strict=True) if 0 < int(m.sum()) < m.numel()]
    ratio = mask.float().mean(1)
    by_ratio = {}
    for lo, hi in zip(bins[:-1], bins[1:], strict=True):
        rows = (ratio > lo) & (ratio <= hi)
        rows_mask = mask[rows]
        if rows.any() and 0 < int(rows_mask.sum()) < rows_mask.numel():
            by_ratio[f"({lo:g}, {hi:g}]"] = round(auroc(scores[rows], rows_mask), 4)
    equal = float((mask & ~differs).sum()) / float(mask.sum())
    keep = ~(mask & ~differs)
    return {"pooled": round(auroc(scores, mask), 4),
            "within_canvas": round(sum(within) / len(within), 4) if within else None,
            "by_ratio": by_ratio,
            "sampled_equal": round(equal, 4),
            "oracle": round(0.5 + (1.0 - equal) / 2.0, 4),
            "differing_only": round(auroc(scores[keep], mask[keep]), 4),
            "against_differs": round(auroc(scores, differs), 4)}
