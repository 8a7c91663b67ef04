"""H_phi: TOAST-style feature selection and top-down feedback on a frozen backbone.

Follows the official self-guidance code (JiwanHur/UnlockMGM ``MaskGitTransformerTOAST``):

- class anchor a_c (B, 1, d): a factorised token generator with ``factor`` slices,
  sum_f w_f (p_f + c_f) -> LayerNorm -> Linear (upstream ``cls_anchor_gen``, factor 16);
- selection: x = (h * clamp(cos(h, a_c), 0, 1)) @ T, h (B, L, d) the last block's output of the
  main pass (every position), T (d, d) initialised to the identity (``top_down_transform``);
- feedback: one block per layer, two bias-free d x d linears; from the top layer down,
  (x, td_l) = (W1 x, W2 W1 x);
- second pass: every input id is [MASK] and the class slot shows the backbone's blank id
  (``use_blank_second``; labels BLANK_LABEL), and each layer's attention value becomes
  W_v LN(x_l) + W_v td_l, with W_v from ``backbone.value_projection(l)``. Upstream's value
  projection has no bias; where a backbone's has one, td_l goes through the weight only (W_v td_l,
  no second bias);
- TOAST's feedback loss: sum_l || W1_l sg(out_l) - sg(in_l) ||^2 over the second pass's block
  inputs/outputs, weight 0.1 (``var_loss``).

Positions follow the backbone's layout: h, x and td_l are (B, L, d) over every position of the
sequence, the class token wherever ``layout.class_position`` puts it, and both passes run the same
backbone, so each td_l lines up with the second pass's values position by position.

Only this module trains; the backbone (and its head) stay frozen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from migbench.api import BLANK_LABEL, NULL_LABEL, Backbone, HookContext, HookSet


class ClassAnchor(nn.Module):
    """labels (B,) -> anchors (B, 1, d). NULL_LABEL uses an extra learned row."""

    def __init__(self, num_classes: int, width: int, factor: int = 16) -> None:
        super().__init__()
        self.num_classes, self.width, self.factor = num_classes, width, factor
        self.position = nn.Parameter(torch.zeros(1, width * factor))
        self.classes = nn.Embedding(num_classes + 1, width * factor)
        self.factors = nn.Parameter(torch.zeros(factor))
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, width)
        for weight in (self.position, self.classes.weight, self.factors):
            nn.init.trunc_normal_(weight, std=0.02)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        rows = torch.where(labels == NULL_LABEL, torch.full_like(labels, self.num_classes), labels)
        parts = (self.position + self.classes(rows)).view(-1, 1, self.width, self.factor)
        return self.proj(self.norm((parts * self.factors).sum(-1)))


class FeedbackBlock(nn.Module):
    """(x (..., d)) -> (W1 x, W2 W1 x): the next top-down state and this layer's signal."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.first = nn.Linear(width, width, bias=False)
        self.second = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.first(x)
        return x, self.second(x)


class TOASTAdapter(nn.Module):
    """Selection + feedback for a ``depth``-block backbone of width ``width``."""

    def __init__(self, num_classes: int, width: int, depth: int, factor: int = 16) -> None:
        super().__init__()
        self.num_classes, self.width, self.depth = num_classes, width, depth
        self.anchor = ClassAnchor(num_classes, width, factor)
        self.top_down_transform = nn.Parameter(torch.eye(width))
        self.decoders = nn.ModuleList(FeedbackBlock(width) for _ in range(depth))
        for block in self.decoders:
            for linear in (block.first, block.second):
                nn.init.trunc_normal_(linear.weight, std=0.02)

    def select(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(h * clamp(cos(h, a_c), 0, 1)) @ T for h (B, L, d)."""
        anchor = self.anchor(labels)
        weight = (F.normalize(hidden, dim=-1) @ F.normalize(anchor, dim=-1).transpose(1, 2)).clamp(0, 1)
        return (hidden * weight) @ self.top_down_transform

    def feedback(self, selected: torch.Tensor) -> list[torch.Tensor]:
        """Top-down signals td_0 .. td_{depth-1}, each (B, L, d), computed from the top layer down."""
        signals: list[torch.Tensor] = [selected] * len(self.decoders)
        x = selected
        for layer in range(len(self.decoders) - 1, -1, -1):
            x, signals[layer] = self.decoders[layer](x)
        return signals

    def feedback_loss(self, block_inputs: list[torch.Tensor], block_outputs: list[torch.Tensor]) -> torch.Tensor:
        """TOAST's var_loss (unweighted): sum_l mse(W1_l sg(out_l), sg(in_l))."""
        return sum(F.mse_loss(block(out.detach())[0], inp.detach())
                   for block, inp, out in zip(self.decoders, block_inputs, block_outputs, strict=True))


@dataclass
class AuxiliaryPass:
    """Hooks of the second (all-[MASK]) pass; ``signals`` are set before each call.

    ``record`` keeps the pass's block inputs/outputs for the feedback loss (training only).
    """

    depth: int
    signals: list[torch.Tensor] = field(default_factory=list)
    record: bool = False
    block_inputs: list[torch.Tensor] = field(default_factory=list)
    block_outputs: list[torch.Tensor] = field(default_factory=list)

    def install(self, add: Callable[[str, Callable], None]) -> None:
        """Register the hooks through ``add(site, hook)``."""
        for i in range(self.depth):
            add(f"attn_value.{i}", self._value_hook(i))
            add(f"block_in.{i}", self._record(self.block_inputs))
            add(f"block_out.{i}", self._record(self.block_outputs))

    def hooks(self) -> HookSet:
        hooks = HookSet()
        self.install(lambda site, hook: hooks.add(site, hook, "self_guidance"))
        return hooks

    def _value_hook(self, index: int) -> Callable[[torch.Tensor, HookContext], torch.Tensor]:
        def add_signal(v: torch.Tensor, ctx: HookContext) -> torch.Tensor:
            weight, _ = ctx.backbone.value_projection(index)
            return v + F.linear(self.signals[index].to(v.dtype), weight.to(v.dtype))
        return add_signal

    def _record(self, store: list[torch.Tensor]) -> Callable[[torch.Tensor, HookContext], torch.Tensor]:
        def keep(x: torch.Tensor, ctx: HookContext) -> torch.Tensor:
            if self.record:
                store.append(x)
            return x
        return keep


class SampledClassHooks(HookSet):
    """A view of ``hooks`` whose hooks see ``ctx.labels`` = the class being sampled, (B,).

    The second pass gives the backbone BLANK_LABEL (its class slot shows ``layout.blank_id``), so
    its own context carries BLANK_LABEL; a method hooked into that pass (KA-MIG's class prior)
    reads the images' class instead, as it did when the slot was blanked inside the embedding."""

    def __init__(self, hooks: HookSet, labels: torch.Tensor) -> None:
        super().__init__()
        self._inner, self._labels = hooks, labels
        self._seen: tuple[HookContext, HookContext] | None = None  # (the forward's context, its view)

    def __call__(self, site: str, x: torch.Tensor, ctx: HookContext) -> torch.Tensor:
        if self._seen is None or self._seen[0] is not ctx:  # one view per forward, not one per site
            self._seen = (ctx, replace(ctx, labels=self._labels))
        return self._inner(site, x, self._seen[1])

    def head(self, default: nn.Module) -> nn.Module:
        return self._inner.head(default)

    def sites(self) -> list[str]:
        return self._inner.sites()

    def signature(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        return self._inner.signature()

    def __bool__(self) -> bool:
        return bool(self._inner)


def auxiliary_logits(backbone: Backbone, adapter: TOASTAdapter, aux: AuxiliaryPass, hooks: HookSet,
                     labels: torch.Tensor, last_block: torch.Tensor) -> torch.Tensor:
    """l_aux (B, N, K): the all-[MASK] pass, class slot blank, steered by the adapter's top-down
    signals from the main pass's ``last_block`` (B, L, d); ``labels`` (B,) are the sampled classes
    (the anchor's input, and what the pass's hooks see: :class:`SampledClassHooks`)."""
    aux.signals = adapter.feedback(adapter.select(last_block, labels))
    blank = torch.full((labels.shape[0], backbone.seq_len), backbone.layout.mask_id,
                       dtype=torch.long, device=labels.device)
    return backbone(blank, torch.full_like(labels, BLANK_LABEL), SampledClassHooks(hooks, labels),
                    branch="self_guidance").logits
