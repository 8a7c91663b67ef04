"""KA-MIG's trainable module and its fusion into a frozen backbone through ``block_in`` hooks.

Before every block i (ka_mig.md section 4):

    x <- x + [f_i(C_co[ids]) + f_i(C_s[ids])] * visible - g_i(P^c) * masked

with f_i, g_i per-block d x d linears initialised to zero (upstream ``zero_convs``/``zero_convs_pos``,
the same f_i serving both positive graphs), so at initialisation the backbone's logits are
reproduced exactly. The paper subtracts the negative prior at masked positions; the official code
subtracts it at every position (``negative_positions = "all"``). The class token gets nothing.
The output head is a trainable copy of the backbone's head (upstream trains ``mlm_layer``).

Graph embeddings are constants once trained (frozen input embeddings): ``constants()`` computes
C_co, C_s (K, d) and P^c (C, N, d). The precomputed path folds them with every block's
projections into lookup tables once (:meth:`KAMIGModule.folded_hooks`); the online path
recomputes them and projects in every forward (:meth:`KAMIGModule.hooks`; same logits up to rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from migbench.methods.ka_mig.encoder import GCNConv, GraphEncoder, NegativePrior
from migbench.methods.ka_mig.graphs import Graph
from torch import nn

from migbench.api import NULL_LABEL, HookContext

Constants = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Terms = tuple[torch.Tensor, torch.Tensor | None]
Hook = Callable[[torch.Tensor, HookContext], torch.Tensor]


@dataclass(frozen=True)
class Switches:
    """Which graphs take part (the ablation) and where the negative prior is subtracted."""

    cooccurrence: bool = True
    semantic: bool = True
    incompatibility: bool = True
    negative_positions: str = "masked"


def zero_linear(width: int) -> nn.Linear:
    layer = nn.Linear(width, width)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class KAMIGModule(nn.Module):
    """GCN encoders, negative prior, zero-initialised per-block projections and the head copy."""

    def __init__(self, width: int, depth: int, head: nn.Linear, co_graph: Graph, s_graph: Graph,
                 incompatible: torch.Tensor) -> None:
        super().__init__()
        num_tokens = head.out_features
        self.co_encoder = GraphEncoder(width)
        self.s_encoder = GraphEncoder(width)
        self.prior = NegativePrior(width)
        self.positive = nn.ModuleList(zero_linear(width) for _ in range(depth))
        self.negative = nn.ModuleList(zero_linear(width) for _ in range(depth))
        self.head = nn.Linear(width, num_tokens)
        self.head.load_state_dict(head.state_dict())
        self.co_edges = GCNConv.normalised_edges(co_graph, num_tokens)
        self.s_edges = GCNConv.normalised_edges(s_graph, num_tokens)
        self.register_buffer("prior_weights", NegativePrior.weights(incompatible), persistent=False)

    def constants(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """C_co (K, d), C_s (K, d), P^c (C, N, d) from the frozen code embeddings (K, d)."""
        return (self.co_encoder(embeddings, self.co_edges), self.s_encoder(embeddings, self.s_edges),
                self.prior(self.prior_weights, embeddings))

    def online_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def precomputed_sizes(self, switches: Switches, num_classes: int, num_positions: int) -> tuple[int, int]:
        """(parameters still run per pass, numbers held as constants) on the folded path: the head
        runs; every block's visible table (K, d) and prior table (C + 1, N, d) are constants
        (each counted only when a graph that feeds it is switched on)."""
        online = sum(p.numel() for p in self.head.parameters())
        rows = (self.head.out_features * (switches.cooccurrence or switches.semantic)
                + (num_classes + 1) * num_positions * switches.incompatibility)
        return online, len(self.positive) * rows * self.head.in_features

    def hooks(self, switches: Switches, constants: Callable[[HookContext], Constants]) -> dict[str, Hook]:
        """site -> hook, projecting C_co[ids], C_s[ids] and P^c[label] in every pass (training and
        the online path); ``constants(ctx)`` gives (C_co, C_s, P^c)."""
        def terms(index: int, ctx: HookContext) -> Terms:
            c_co, c_s, prior = constants(ctx)
            safe = _visible_ids(ctx)
            visible = torch.zeros(*safe.shape, self.head.in_features, device=safe.device)
            if switches.cooccurrence:
                visible = visible + self.positive[index](c_co[safe])
            if switches.semantic:
                visible = visible + self.positive[index](c_s[safe])
            negative = (self.negative[index](NegativePrior.lookup(prior, ctx.labels))
                        if switches.incompatibility else None)
            return visible, negative
        return self._hooks(switches, terms)

    def folded_hooks(self, switches: Switches, constants: Constants,
                     device: torch.device | None = None) -> dict[str, Hook]:
        """site -> hook reading per-block tables folded once from the constant (C_co, C_s, P^c):

            visible_i = f_i(C_co) + f_i(C_s)   (K, d), over the graphs switched on
            prior_i   = g_i(P^c)               (C + 1, N, d), row C = g_i(0) for the null class

        so a pass gathers visible_i[ids] and prior_i[label] instead of running the projections
        (the paper's precomputed strategy; the same logits as :meth:`hooks` up to rounding).
        The tables are folded where ``constants`` live and then moved to ``device``."""
        c_co, c_s, prior = constants
        tables = []
        with torch.no_grad(), torch.autocast(c_co.device.type, enabled=False):
            for f, g in zip(self.positive, self.negative, strict=True):
                visible = torch.zeros(c_co.shape[0], f.out_features, device=c_co.device)
                if switches.cooccurrence:
                    visible = visible + f(c_co)
                if switches.semantic:
                    visible = visible + f(c_s)
                negative = g(torch.cat([prior, torch.zeros_like(prior[:1])]))
                tables.append((visible.to(device), negative.to(device)))

        def terms(index: int, ctx: HookContext) -> Terms:
            visible, negative = tables[index]
            rows = torch.where(ctx.labels == NULL_LABEL, negative.shape[0] - 1, ctx.labels)
            return visible[_visible_ids(ctx)], negative[rows] if switches.incompatibility else None
        return self._hooks(switches, terms)

    def _hooks(self, switches: Switches, terms: Callable[[int, HookContext], Terms]) -> dict[str, Hook]:
        out: dict[str, Hook] = {f"block_in.{i}": self._fusion(i, switches, terms) for i in range(len(self.positive))}
        out["logits"] = lambda logits, ctx: self.head(ctx.extras["hidden"])
        return out

    @staticmethod
    def _fusion(index: int, switches: Switches, terms: Callable[[int, HookContext], Terms]) -> Hook:
        """Block ``index``'s hook: x += visible term at visible tokens - prior term at masked ones
        (or at all tokens, the official code); the class token gets nothing."""
        def fuse(x: torch.Tensor, ctx: HookContext) -> torch.Tensor:
            visible, negative = terms(index, ctx)
            masked = ctx.masked
            delta = visible * (~masked)[..., None].to(visible.dtype)
            if negative is not None:
                if switches.negative_positions == "masked":
                    negative = negative * masked[..., None].to(negative.dtype)
                delta = delta - negative
            x = x.clone()
            x[:, ctx.token_slice] = x[:, ctx.token_slice] + delta.to(x.dtype)
            return x
        return fuse


def _visible_ids(ctx: HookContext) -> torch.Tensor:
    """Token ids (B, N) with masked positions set to 0 (their terms are zeroed afterwards)."""
    return ctx.ids.masked_fill(ctx.masked, 0)
