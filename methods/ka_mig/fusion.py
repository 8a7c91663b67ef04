"""KA-MIG's trainable module and its fusion into a frozen backbone through ``block_in`` hooks.

Before every block i (ka_mig.md section 4):

    x <- x + [f_i(C_co[ids]) + f_i(C_s[ids])] * visible - g_i(P^c) * masked

with f_i, g_i per-block d x d linears initialised to zero (upstream ``zero_convs``/``zero_convs_pos``,
the same f_i serving both positive graphs, each term with its own bias), so at initialisation the
backbone's logits are reproduced exactly. The paper subtracts the negative prior at masked positions; the official code
subtracts it at every position (``negative_positions = "all"``). The class token gets nothing.
The output head is a trainable copy of the backbone's head (upstream trains ``mlm_layer``).

Parameter names are upstream's (:class:`GraphAdapter`, ``graph_layer.*``), so the adapter part of
KA-MIG's released ``graph_nnet_ema.pth`` loads strictly (:mod:`.release`), with upstream's block
order: the lists are ``.pop()``ed, so block k of D (call order) uses ``zero_convs[D - 1 - k]``
and ``zero_convs_pos[D - 1 - k]``. Files in the layout before that naming (``co_encoder``,
``s_encoder``, ``prior.proj``, ``positive.{k}``, ``negative.{k}`` as (d, d) linears) load
through :func:`upgrade_legacy_state`, a documented conversion (renames, the reversed index,
(d, d) -> (d, d, 1)) that changes no value, so the committed Fashion-MNIST models and their
samples stay bit-identical.

Graph embeddings are constants once trained (frozen input embeddings): ``constants()`` computes
C_co, C_s (K, d) and P^c (C, N, d). The precomputed path folds them with every block's
projections into lookup tables once (:meth:`KAMIGModule.folded_hooks`, one step past the paper's
precomputed strategy, which caches the features and projects them per pass); the online path
recomputes them and projects in every forward (:meth:`KAMIGModule.hooks`; same logits up to rounding).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from migbench.methods.ka_mig.encoder import (
    Edges,
    GCNConv,
    GraphEncoder,
    NegativePrior,
    PointwiseConv,
)
from migbench.methods.ka_mig.graphs import Graph
from torch import nn

from migbench.api import NULL_LABEL, Hook, HookContext, HookSet

Constants = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Terms = tuple[torch.Tensor | None, torch.Tensor | None]  # (visible term, prior term), (B, N, d) each
PRIOR_FOLD_LIMIT = 2**26  # numbers (256 MB in fp32) the per-block prior tables may take
EDGE_PARTS = ("source", "target", "norm")  # the buffers of a graph's normalised edges


@dataclass(frozen=True)
class Switches:
    """Which graphs take part (the ablation) and where the negative prior is subtracted."""

    cooccurrence: bool = True
    semantic: bool = True
    incompatibility: bool = True
    negative_positions: str = "masked"

    def positive_on(self) -> bool:
        """Whether a positive graph (added at visible tokens) is on."""
        return self.cooccurrence or self.semantic

    def any_graph(self) -> bool:
        """Whether any graph term is fused (otherwise only the head copy runs)."""
        return self.positive_on() or self.incompatibility


GRAPH_SWITCHES = ("cooccurrence", "semantic", "incompatibility")  # the Switches fields naming a graph


class GraphAdapter(nn.Module):
    """Upstream's ``GraphAdapter`` parameters: the GCNs of G_co (``co_graph_layer``) and G_s
    (``re_graph_layer``), the negative prior (``pos_neg_codebook_graph_layer``) and the depth
    zero-initialised projections of each kind (``zero_convs``, ``zero_convs_pos``), stored in
    upstream's reversed block order (:meth:`positive`, :meth:`negative` take the block index)."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.co_graph_layer = GraphEncoder(width)
        self.re_graph_layer = GraphEncoder(width)
        self.pos_neg_codebook_graph_layer = NegativePrior(width)
        self.zero_convs = nn.ModuleList(PointwiseConv(width, width, zero=True) for _ in range(depth))
        self.zero_convs_pos = nn.ModuleList(PointwiseConv(width, width, zero=True) for _ in range(depth))

    @property
    def depth(self) -> int:
        return len(self.zero_convs)

    @property
    def width(self) -> int:
        return self.zero_convs[0].in_features

    def positive(self, block: int) -> PointwiseConv:
        """f_block, the projection of both positive graphs before block ``block`` (call order)."""
        return self.zero_convs[self.depth - 1 - block]

    def negative(self, block: int) -> PointwiseConv:
        """g_block, the projection of the negative prior before block ``block`` (call order)."""
        return self.zero_convs_pos[self.depth - 1 - block]


LEGACY_PREFIXES = {"co_encoder.layers.": "graph_layer.co_graph_layer.conv",
                   "s_encoder.layers.": "graph_layer.re_graph_layer.conv"}


def upgrade_legacy_state(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """A KA-MIG state dict in the layout before upstream's names (the committed Fashion-MNIST
    models) in today's, values unchanged: ``co_encoder.layers.{j}`` -> ``graph_layer.co_graph_layer.conv{j+1}``,
    ``s_encoder.layers.{j}`` -> ``graph_layer.re_graph_layer.conv{j+1}``, ``prior.proj`` ->
    ``graph_layer.pos_neg_codebook_graph_layer.conv1``, ``positive.{k}`` / ``negative.{k}`` (block
    k in call order) -> ``graph_layer.zero_convs.{depth-1-k}`` / ``zero_convs_pos.{depth-1-k}``,
    their (d, d) weights viewed as (d, d, 1); ``head.*`` as is. A state in today's layout is
    returned as is."""
    if not any(key.startswith(("co_encoder.", "s_encoder.", "prior.", "positive.", "negative.")) for key in state):
        return state
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for old, new in LEGACY_PREFIXES.items():
            if key.startswith(old):
                layer, rest = key[len(old):].split(".", 1)
                key = f"{new}{int(layer) + 1}.{rest}"
        if key.startswith("prior.proj."):
            key = "graph_layer.pos_neg_codebook_graph_layer.conv1." + key.removeprefix("prior.proj.")
            value = value[..., None] if key.endswith("weight") else value
        for old, new in (("positive.", "zero_convs."), ("negative.", "zero_convs_pos.")):
            if key.startswith(old):
                block, rest = key[len(old):].split(".", 1)
                key = f"graph_layer.{new}{depth - 1 - int(block)}.{rest}"
                value = value[..., None] if rest == "weight" else value
        out[key] = value
    return out


class KAMIGModule(nn.Module):
    """GCN encoders, negative prior and zero-initialised per-block projections under upstream's
    names (``graph_layer``: :class:`GraphAdapter`), and the head copy (``head``)."""

    def __init__(self, width: int, depth: int, head: nn.Module, co_graph: Graph, s_graph: Graph,
                 incompatible: torch.Tensor) -> None:
        super().__init__()
        num_tokens = incompatible.shape[-1]  # K: the graphs' nodes are the image codes
        self.graph_layer = GraphAdapter(width, depth)
        self.head = copy.deepcopy(head).requires_grad_(True)  # the whole head, as upstream copies mlm_layer
        for graph, edges in (("co", co_graph), ("s", s_graph)):  # buffers: they move with the module
            for part, tensor in zip(EDGE_PARTS, GCNConv.normalised_edges(edges, num_tokens), strict=True):
                self.register_buffer(f"{graph}_{part}", tensor, persistent=False)
        # compact (bool, C x N x K): the fp32 row-normalised weights exist only inside constants()
        self.register_buffer("incompatible", incompatible.bool(), persistent=False)
        self.register_load_state_dict_pre_hook(_upgrade_on_load)

    def edges(self, graph: str, device: torch.device | None = None) -> Edges:
        """Normalised edges of graph ``co`` or ``s``, on the module's device or on ``device``."""
        edges = tuple(getattr(self, f"{graph}_{part}") for part in EDGE_PARTS)
        return edges if device is None else tuple(e.to(device) for e in edges)

    def constants(self, embeddings: torch.Tensor, aggregate_on: torch.device | None = None) -> Constants:
        """C_co (K, d), C_s (K, d), P^c (C, N, d) from the frozen code embeddings (K, d).

        Dense products run where ``embeddings`` and the module are; the GCNs' scatter-adds where
        the edges are: the module's device, or ``aggregate_on`` (the fold uses the CPU)."""
        co, s = self.edges("co", aggregate_on), self.edges("s", aggregate_on)
        weights = NegativePrior.weights(self.incompatible)
        graph = self.graph_layer
        return (graph.co_graph_layer(embeddings, co), graph.re_graph_layer(embeddings, s),
                graph.pos_neg_codebook_graph_layer(weights, embeddings))

    def fold(self, switches: Switches, embeddings: torch.Tensor, device: torch.device) -> dict[str, Hook]:
        """:meth:`folded_hooks` of the constants of ``embeddings`` (K, d), with this module moved
        to the sampling ``device``: every dense product (GCN weights, the prior product, the block
        projections) runs there, deterministically; the GCN scatter-adds run on the CPU, since
        CUDA's index_add_ is not deterministic. So every process holds bit-identical tables (on
        one kind of GPU), and on a CPU device this is the all-CPU fold it always was."""
        self.to(device)
        with torch.no_grad():
            constants = self.constants(embeddings.detach().float().to(device), aggregate_on=torch.device("cpu"))
            return self.folded_hooks(switches, constants, device)

    def online_parameters(self, switches: Switches) -> int:
        """Parameters run per pass on the online path, counting only what the graphs switched on use."""
        graph = self.graph_layer
        parts: list[nn.Module] = [self.head]
        parts += [graph.co_graph_layer] if switches.cooccurrence else []
        parts += [graph.re_graph_layer] if switches.semantic else []
        parts += [graph.zero_convs] if switches.positive_on() else []
        parts += [graph.pos_neg_codebook_graph_layer, graph.zero_convs_pos] if switches.incompatibility else []
        return sum(p.numel() for part in parts for p in part.parameters())

    def folds_prior(self, num_classes: int, num_positions: int) -> bool:
        """Whether the folded path keeps one prior table per block: only while depth x (C + 1) x N x d
        stays within ``PRIOR_FOLD_LIMIT`` (1.1M numbers here; 4.9B at ImageNet scale, where the
        prior stays one (C, N, d) constant projected in every pass, the paper's strategy)."""
        size = self.graph_layer.depth * (num_classes + 1) * num_positions * self.graph_layer.width
        return size <= PRIOR_FOLD_LIMIT

    def precomputed_sizes(self, switches: Switches, num_classes: int, num_positions: int) -> tuple[int, int]:
        """(parameters still run per pass, numbers held as constants) on the folded path, counting
        only what the graphs switched on use: the head always runs; the visible tables are
        depth x K x d; the prior is depth x (C + 1) x N x d folded, or C x N x d with its
        projections online (:meth:`folds_prior`)."""
        width, depth, k = self.graph_layer.width, self.graph_layer.depth, self.incompatible.shape[-1]
        online = sum(p.numel() for p in self.head.parameters())
        constants = depth * k * width if switches.positive_on() else 0
        if switches.incompatibility:
            if self.folds_prior(num_classes, num_positions):
                constants += depth * (num_classes + 1) * num_positions * width
            else:
                constants += num_classes * num_positions * width
                online += sum(p.numel() for p in self.graph_layer.zero_convs_pos.parameters())
        return online, constants

    def hooks(self, switches: Switches, constants: Callable[[HookContext], Constants]) -> dict[str, Hook]:
        """site -> hook, projecting C_co[ids], C_s[ids] and P^c[label] in every pass (training and
        the online path); ``constants(ctx)`` gives (C_co, C_s, P^c)."""
        def terms(index: int, ctx: HookContext) -> Terms:
            c_co, c_s, prior = constants(ctx)
            safe = _visible_ids(ctx)
            visible = _positive_term(self.graph_layer.positive(index), switches, c_co, c_s, rows=safe)
            negative = (self.graph_layer.negative(index)(NegativePrior.lookup(prior, ctx.labels))
                        if switches.incompatibility else None)
            return visible, negative
        return self._hooks(switches, terms)

    def folded_hooks(self, switches: Switches, constants: Constants,
                     device: torch.device | None = None) -> dict[str, Hook]:
        """site -> hook reading per-block tables folded once from the constant (C_co, C_s, P^c):

            visible_i = f_i(C_co) + f_i(C_s)   (K, d), over the graphs switched on
            prior_i   = g_i(P^c)               (C + 1, N, d), row C = g_i(0) for the null class

        so a pass gathers visible_i[ids] and prior_i[label] instead of running the projections.
        This goes one step past the paper's precomputed strategy, which caches C_co, C_s and P^c
        and still runs f_i and g_i in every pass; the logits are the same as :meth:`hooks` up to
        rounding. When the prior tables would be too large (:meth:`folds_prior`), P^c is kept as
        the paper does and g_i runs per pass. Tables are folded in fp32 where ``constants`` live,
        then moved to ``device``."""
        c_co, c_s, prior = (c.float() for c in constants)
        fold_prior = self.folds_prior(prior.shape[0], prior.shape[1])
        visible_tables, prior_tables = [], []
        with torch.no_grad(), torch.autocast(c_co.device.type, enabled=False):
            for block in range(self.graph_layer.depth):
                f, g = self.graph_layer.positive(block), self.graph_layer.negative(block)
                visible = _positive_term(f, switches, c_co, c_s)
                visible_tables.append(visible.to(device) if visible is not None else None)
                if switches.incompatibility and fold_prior:
                    prior_tables.append(g(torch.cat([prior, torch.zeros_like(prior[:1])])).to(device))
        unfolded_prior = prior.to(device) if switches.incompatibility and not fold_prior else None

        def terms(index: int, ctx: HookContext) -> Terms:
            table = visible_tables[index]
            visible = table[_visible_ids(ctx)] if table is not None else None
            if prior_tables:
                rows = torch.where(ctx.labels == NULL_LABEL, prior_tables[index].shape[0] - 1, ctx.labels)
                return visible, prior_tables[index][rows]
            if unfolded_prior is not None:
                return visible, self.graph_layer.negative(index)(NegativePrior.lookup(unfolded_prior, ctx.labels))
            return visible, None
        return self._hooks(switches, terms)

    def _hooks(self, switches: Switches, terms: Callable[[int, HookContext], Terms]) -> dict[str, Hook]:
        """The fusion hook before every block (none when every graph is off); the head copy is
        installed apart, as the backbone's head replacement (:meth:`hook_set`)."""
        if not switches.any_graph():
            return {}
        return {f"block_in.{i}": self._fusion(i, switches, terms) for i in range(self.graph_layer.depth)}

    def hook_set(self, hooks: dict[str, Hook]) -> HookSet:
        """``hooks`` (from :meth:`hooks` or :meth:`folded_hooks`) with the head copy replacing
        the backbone's head: what one KA-MIG forward pass runs."""
        out = HookSet()
        for site, hook in hooks.items():
            out.add(site, hook, "ka_mig")
        out.replace_head(self.head, "ka_mig")
        return out

    @staticmethod
    def _fusion(index: int, switches: Switches, terms: Callable[[int, HookContext], Terms]) -> Hook:
        """Block ``index``'s hook: x += visible term at visible tokens - prior term at masked ones
        (or at all tokens, the official code); the class token gets nothing."""
        def fuse(x: torch.Tensor, ctx: HookContext) -> torch.Tensor:
            delta = _delta(terms(index, ctx), ctx.masked, switches)
            if delta is None:
                return x
            return x + _pad_to_sequence(delta.to(x.dtype), ctx.token_slice, x.shape[1])
        return fuse


def _delta(terms: Terms, masked: torch.Tensor, switches: Switches) -> torch.Tensor | None:
    """What block fusion adds at the image positions (B, N, d): the visible term (B, N, d) where
    ``masked`` (B, N) is False, minus the prior term at masked positions (at every position with
    ``negative_positions="all"``); None when no graph term is on."""
    visible, negative = terms
    delta = visible * (~masked)[..., None].to(visible.dtype) if visible is not None else None
    if negative is not None:
        if switches.negative_positions == "masked":
            negative = negative * masked[..., None].to(negative.dtype)
        delta = -negative if delta is None else delta - negative
    return delta


def _positive_term(f: PointwiseConv, switches: Switches, c_co: torch.Tensor, c_s: torch.Tensor,
                   rows: torch.Tensor | None = None) -> torch.Tensor | None:
    """f(C_co[rows]) + f(C_s[rows]) over the positive graphs switched on (one f_i serves both, as
    upstream), or None when both are off. C_co, C_s (K, d); rows (B, N) token ids or None for
    every row. Summed from an fp32 zero, so the sum stays fp32 under autocast."""
    if not switches.positive_on():
        return None
    shape = rows.shape if rows is not None else c_co.shape[:1]
    total = torch.zeros(*shape, f.out_features, device=c_co.device)
    for graph, on in ((c_co, switches.cooccurrence), (c_s, switches.semantic)):
        if on:
            total = total + f(graph[rows] if rows is not None else graph)
    return total


def _upgrade_on_load(module: KAMIGModule, state: dict[str, torch.Tensor], prefix: str, *_: object) -> None:
    """``load_state_dict`` pre-hook: a state in the legacy layout is upgraded in place
    (:func:`upgrade_legacy_state`), so the strict load then checks today's keys."""
    own = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    upgraded = upgrade_legacy_state(own, module.graph_layer.depth)
    if upgraded is not own:
        for key in own:
            del state[prefix + key]
        state.update({prefix + key: value for key, value in upgraded.items()})


def _pad_to_sequence(delta: torch.Tensor, token_slice: slice, length: int) -> torch.Tensor:
    """delta (B, N, d) at the image positions ``token_slice`` of a (B, length, d) sequence, zero
    rows elsewhere (the class token): adding it is one add, no copy of the activations. Image
    rows get x + delta as before; other rows x + 0.0, which is x (a -0.0 would become +0.0,
    equal in every later operation)."""
    start, stop, step = token_slice.indices(length)
    if step != 1:
        raise ValueError(f"token_slice must be contiguous, got {token_slice}")
    return F.pad(delta, (0, 0, start, length - stop))


def _visible_ids(ctx: HookContext) -> torch.Tensor:
    """Token ids (B, N) with masked positions set to 0 (their terms are zeroed afterwards)."""
    return ctx.ids.masked_fill(ctx.masked, 0)
