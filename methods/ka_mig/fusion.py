"""KA-MIG's trainable module and its fusion into a frozen backbone through ``block_in`` hooks.

Before every block i (ka_mig.md section 4):

    x <- x + [f_i(C_co[ids]) + f_i(C_s[ids])] * visible - g_i(P^c) * masked

with f_i, g_i per-block d x d linears initialised to zero (upstream ``zero_convs``/``zero_convs_pos``,
the same f_i serving both positive graphs), so at initialisation the backbone's logits are
reproduced exactly. The paper subtracts the negative prior at masked positions; the official code
subtracts it at every position (``negative_positions = "all"``). The class token gets nothing.
The output head is a trainable copy of the backbone's head (upstream trains ``mlm_layer``).

Graph embeddings are constants once trained (frozen input embeddings): ``constants()`` computes
C_co, C_s (K, d) and P^c (C, N, d) once for the precomputed path; the online path recomputes them
in every forward (same numbers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from migbench.methods.ka_mig.encoder import GCNConv, GraphEncoder, NegativePrior
from migbench.methods.ka_mig.graphs import Graph
from torch import nn

from migbench.api import HookContext


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

    def precomputed_sizes(self, num_classes: int, num_positions: int) -> tuple[int, int]:
        """(parameters still run per pass, numbers held as constants) on the precomputed path."""
        online = sum(p.numel() for m in (self.positive, self.negative, self.head) for p in m.parameters())
        width = self.head.in_features
        return online, 2 * self.head.out_features * width + num_classes * num_positions * width

    def hooks(self, switches: Switches, constants: Callable[[HookContext], tuple[torch.Tensor, ...]]
              ) -> dict[str, Callable[[torch.Tensor, HookContext], torch.Tensor]]:
        """site -> hook: the fusion before each block and the head at ``logits``."""
        out: dict[str, Callable[[torch.Tensor, HookContext], torch.Tensor]] = {}
        for i in range(len(self.positive)):
            out[f"block_in.{i}"] = self._fusion(i, switches, constants)
        out["logits"] = lambda logits, ctx: self.head(ctx.extras["hidden"])
        return out

    def _fusion(self, index: int, switches: Switches,
                constants: Callable[[HookContext], tuple[torch.Tensor, ...]]
                ) -> Callable[[torch.Tensor, HookContext], torch.Tensor]:
        def fuse(x: torch.Tensor, ctx: HookContext) -> torch.Tensor:
            c_co, c_s, prior = constants(ctx)
            masked = ctx.masked
            safe = ctx.ids.masked_fill(masked, 0)
            delta = torch.zeros_like(x[:, ctx.token_slice])
            if switches.cooccurrence:
                delta = delta + self.positive[index](c_co[safe])
            if switches.semantic:
                delta = delta + self.positive[index](c_s[safe])
            delta = delta * (~masked)[..., None].to(delta.dtype)
            if switches.incompatibility:
                negative = self.negative[index](NegativePrior.lookup(prior, ctx.labels))
                if switches.negative_positions == "masked":
                    negative = negative * masked[..., None].to(negative.dtype)
                delta = delta - negative
            x = x.clone()
            x[:, ctx.token_slice] = x[:, ctx.token_slice] + delta.to(x.dtype)
            return x
        return fuse
