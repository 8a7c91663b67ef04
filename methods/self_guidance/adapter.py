"""H_phi: TOAST-style feature selection and top-down feedback on a frozen backbone.

Follows the official self-guidance code (JiwanHur/UnlockMGM @33e139a, ``MaskGitTransformerTOAST``
of muse/modeling_transformer_toast.py), with its module names, so the released EMA adapter loads
strictly (:mod:`.release`):

- class anchor a_c (B, 1, d) (``cls_anchor_gen``, upstream's ``TokenGenerator`` with one token):
  mlp_t(LayerNorm(sum_f mlp_f[f] (mlp_p[0] + mlp_c[c])[..., f])), the factor f the *last* axis of
  the ``.view(..., d, F)``, the LayerNorm eps 1e-5 with a bias, ``factor`` F = 16 upstream;
- selection: x = (h * clamp(cos(h, a_c), 0, 1)) @ T, h (B, L, d) the last block's output of the
  main pass (every position), T (d, d) right-multiplied, initialised to the identity
  (``top_down_transform``);
- feedback: one ``decoders[l]`` block per layer, two bias-free d x d linears; from the top layer
  down, (x, td_l) = (linear(x), linear2(linear(x)));
- second pass: every input id is [MASK] and the class slot shows the backbone's blank id
  (``use_blank_second``: upstream fills the class slot with the mask id too; labels
  BLANK_LABEL), and each layer's attention value gets the signal through the layer's own value
  projection (W_v, b_v) = ``backbone.value_projection(l)``: upstream calls the value Linear on
  td_l, so value = W_v x_l + b_v + W_v td_l + b_v, the bias counted twice (``signal_bias=True``,
  the released adapter's). The adapters fitted here before the release was read add W_v td_l
  only (``signal_bias=False``, the default: their samples stay as they were);
- TOAST's feedback loss: sum_l || linear_l(sg(out_l)) - sg(in_l) ||^2 over the second pass's block
  inputs/outputs, weight 0.1 (``var_loss``).

The anchor's class table has C rows upstream (no null class); ``null_class=True`` (the default,
our fitted adapters) adds a learned row C for NULL_LABEL. Adapters saved before the renaming
(``anchor.{position,classes,factors,norm,proj}``, ``decoders.l.{first,second}``) load through a
rename pre-hook (:func:`renamed_state`).

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
    """labels (B,) -> anchors (B, 1, d) (upstream ``TokenGenerator(1, C, F, d, d)``).

    ``null_class``: an extra learned row C of ``mlp_c`` for NULL_LABEL (ours; upstream has none,
    and a NULL_LABEL there is refused)."""

    def __init__(self, num_classes: int, width: int, factor: int = 16, null_class: bool = True) -> None:
        super().__init__()
        self.num_classes, self.width, self.factor, self.null_class = num_classes, width, factor, null_class
        self.mlp_p = nn.Embedding(1, width * factor, _weight=torch.zeros(1, width * factor))
        self.mlp_c = nn.Embedding(num_classes + int(null_class), width * factor)
        self.mlp_f = nn.Embedding(1, factor, _weight=torch.zeros(1, factor))
        self.layer_norm = nn.LayerNorm(width)
        self.mlp_t = nn.Linear(width, width)
        for weight in (self.mlp_p.weight, self.mlp_c.weight, self.mlp_f.weight):
            nn.init.trunc_normal_(weight, std=0.02)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        null = labels == NULL_LABEL
        if not self.null_class and bool(null.any()):
            raise ValueError("this self-guidance adapter has no null-class anchor (upstream's has none): "
                             "sample it with class labels")
        rows = torch.where(null, torch.full_like(labels, self.num_classes), labels)
        parts = (self.mlp_p.weight + self.mlp_c(rows)).view(-1, 1, self.width, self.factor)
        return self.mlp_t(self.layer_norm((parts * self.mlp_f.weight[0]).sum(-1)))


class FeedbackBlock(nn.Module):
    """(x (..., d)) -> (linear(x), linear2(linear(x))): the next top-down state and this layer's
    signal (upstream ``Decode_Block``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width, bias=False)
        self.linear2 = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.linear(x)
        return x, self.linear2(x)


_OLD_NAMES = (("anchor.position", "cls_anchor_gen.mlp_p.weight"),
              ("anchor.classes.weight", "cls_anchor_gen.mlp_c.weight"),
              ("anchor.factors", "cls_anchor_gen.mlp_f.weight"),
              ("anchor.norm.", "cls_anchor_gen.layer_norm."),
              ("anchor.proj.", "cls_anchor_gen.mlp_t."))


def renamed_state(state: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Rename, in place, the keys of an adapter saved before upstream's names (``anchor.*``,
    ``decoders.l.first/second``) to upstream's; ``anchor.factors`` (F,) becomes ``mlp_f.weight``
    (1, F). Keys already in upstream's names are left alone."""
    for key in [k for k in state if k.startswith(prefix)]:
        name = key[len(prefix):]
        for old, new in _OLD_NAMES:
            if name.startswith(old):
                name = new + name[len(old):]
        if name.startswith("decoders."):
            name = name.replace(".first.", ".linear.").replace(".second.", ".linear2.")
        if prefix + name != key:
            value = state.pop(key)
            state[prefix + name] = value[None] if name == "cls_anchor_gen.mlp_f.weight" and value.dim() == 1 else value


class TOASTAdapter(nn.Module):
    """Selection + feedback for a ``depth``-block backbone of width ``width``.

    ``signal_bias``: the second pass adds W_v td_l + b_v (upstream, the released adapter) or
    W_v td_l (False: the adapters fitted here so far); ``null_class``: :class:`ClassAnchor`."""

    def __init__(self, num_classes: int, width: int, depth: int, factor: int = 16, *,
                 null_class: bool = True, signal_bias: bool = False) -> None:
        super().__init__()
        self.num_classes, self.width, self.depth, self.signal_bias = num_classes, width, depth, signal_bias
        self.cls_anchor_gen = ClassAnchor(num_classes, width, factor, null_class)
        self.top_down_transform = nn.Parameter(torch.eye(width))
        self.decoders = nn.ModuleList(FeedbackBlock(width) for _ in range(depth))
        for block in self.decoders:
            for linear in (block.linear, block.linear2):
                nn.init.trunc_normal_(linear.weight, std=0.02)
        self._register_load_state_dict_pre_hook(
            lambda state, prefix, *args: renamed_state(state, prefix))

    def select(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(h * clamp(cos(h, a_c), 0, 1)) @ T for h (B, L, d)."""
        anchor = self.cls_anchor_gen(labels)
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
        """TOAST's var_loss (unweighted): sum_l mse(linear_l(sg(out_l)), sg(in_l))."""
        return sum(F.mse_loss(block(out.detach())[0], inp.detach())
                   for block, inp, out in zip(self.decoders, block_inputs, block_outputs, strict=True))


@dataclass
class AuxiliaryPass:
    """Hooks of the second (all-[MASK]) pass; ``signals`` are set before each call.

    ``signal_bias``: each layer's value gets W_v td_l + b_v (upstream) or W_v td_l
    (:class:`TOASTAdapter`'s ``signal_bias``).

    ``record`` keeps the pass's block inputs/outputs for the feedback loss (training only).
    """

    depth: int
    signal_bias: bool = False
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
            weight, bias = ctx.backbone.value_projection(index)
            bias = bias.to(v.dtype) if self.signal_bias and bias is not None else None
            return v + F.linear(self.signals[index].to(v.dtype), weight.to(v.dtype), bias)
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
