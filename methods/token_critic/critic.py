"""The Token-Critic network: the generator's own family with one logit per token.

The critic's body is a network of the backbone's family and size whose K-way head is replaced by
a 1-way ``Linear(width, 1)``: ``critic(ids (B, N), labels (B,)) -> (B, N)`` logits of "this token
was sampled by the generator" (Lezama et al., ECCV 2022). Input ids are a complete canvas (no mask
tokens at sampling time). Nothing here knows a family: the body is a copy of the stack's backbone
(loading and tests) or the family's fresh network (``backbone.fresh()``, training).

The paper's critic is a transformer of the generator's size. :func:`new_critic` builds that and,
with ``init = "generator"``, starts its body from the generator's weights (a new 1-logit head):
our choice, close to lucidrains' ``SelfCritic`` (a critic head on the generator's own features). A
smaller critic trained from scratch (an earlier version: width 192, 4 blocks, 600 steps, commit
8234ad6) learned mostly the canvas's mask ratio here: pooled AUROC 0.68 but within-canvas AUROC
0.52 (see :func:`breakdown`).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import torch
from torch import nn

from migbench.api import Backbone, HookSet, Stack


class TokenCritic(nn.Module):
    """``forward(ids (B, N), labels (B,)) -> fake logits (B, N)`` (float32).

    ``body`` is a backbone-family network, used as it is apart from its ``head``, which becomes
    a fresh ``Linear(width, 1)`` (zero bias, weights of std 0.02 drawn on the CPU) on its device."""

    def __init__(self, body: Backbone) -> None:
        super().__init__()
        head = nn.Linear(body.width, 1)
        nn.init.zeros_(head.bias)
        nn.init.trunc_normal_(head.weight, std=0.02)
        self.body = body
        self.body.head = head.to(next(body.parameters()).device)

    def describe(self) -> dict[str, object]:
        return {"kind": "token_critic", "backbone": self.body.describe()}

    def forward(self, ids: torch.Tensor, labels: torch.Tensor, hooks: HookSet | None = None) -> torch.Tensor:
        return self.body(ids, labels, hooks, branch="critic").logits[..., 0].float()


def new_critic(stack: Stack, init: str) -> TokenCritic:
    """An untrained critic of ``stack``'s backbone family and size with a fresh head.

    The body is ``backbone.fresh()`` (the family's random initialisation, drawn from the global
    RNG); ``init = "generator"`` then loads every body weight but the head from the backbone,
    ``"scratch"`` keeps the random ones. A backbone without ``fresh()`` is refused in one line."""
    generator = stack.backbone
    if not callable(getattr(generator, "fresh", None)):
        raise ValueError(f"fit token_critic: stack {stack.name}'s backbone has no fresh() (an untrained "
                         "network of its family, which the critic is made of)")
    critic = TokenCritic(generator.fresh())
    if init == "generator":
        body = {k: v for k, v in generator.state_dict().items() if not k.startswith("head.")}
        missing, unexpected = critic.body.load_state_dict(body, strict=False)
        if unexpected or set(missing) != {"head.weight", "head.bias"}:
            raise ValueError(f"generator and critic bodies differ: missing {missing}, unexpected {unexpected}")
    return critic


def critic_for(backbone: Backbone) -> TokenCritic:
    """A critic whose body is a copy of ``backbone`` (the module committed critics load into)."""
    return TokenCritic(copy.deepcopy(backbone))


def check_trained_for(name: str, model: dict[str, Any], backbone: Backbone) -> None:
    """One line when the critic ``name``, whose manifest entry records ``model``, was made for
    another backbone than ``backbone`` (its ``describe()``). Entries written before critics
    recorded ``{"kind": "token_critic", "backbone": ...}`` list the body's config flat."""
    described = json.loads(json.dumps(backbone.describe()))  # as a manifest holds it (tuples as lists)
    if "backbone" in model:
        recorded, actual = model["backbone"], described
    else:
        recorded = {k: v for k, v in model.items() if k != "kind"}
        actual = {k: v for k, v in described.items() if k != "kind"}
    if recorded != actual:
        raise ValueError(f"token_critic.weights={name!r} is a critic for the backbone {recorded}; this backbone "
                         f"is {actual} (fit one with `migbench fit token_critic --backbone STACK`)")


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
