"""KA-MIG's graph-aware encoder: two 3-layer GCNs and the negative prior (ka_mig.md section 3).

``GCNConv`` re-implements PyG's layer with its defaults (``add_remaining_self_loops`` with fill
value 1, symmetric normalisation by the *weighted* in-degree, source-to-target flow, bias after
aggregation); a test checks it against a hand computation. A GCN stacks three of them with ReLU
after each (the last too) and reads out the mean of the three layers' outputs. Node features are
the frozen backbone's input embeddings of the K codes (not the VQ codebook).

Negative prior: P^c (C, N, d) = sum_k G_p[c, i, k] / |I_{c,i}| * W(C)_k with W a d x d linear (with
bias, default init) and G_p the incompatibility indicator; the null class gives 0.

Parameter names are upstream's (KA-MIG ``libs/graph_layer.py``), so the released adapter loads
strictly: a GCN's layers are ``conv1``, ``conv2``, ``conv3``, each ``lin.weight`` (d, d) and
``bias`` (PyG >= 2); the prior's W is ``conv1`` stored as upstream's 1x1 ``Conv1d`` (weight
(d, d, 1), bias (d,)) and applied as the per-token linear it is, ``F.linear(x, w[..., 0], b)``
(:class:`PointwiseConv`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from migbench.methods.ka_mig.graphs import Graph
from torch import nn

from migbench.api import NULL_LABEL

Edges = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (source (E,), target (E,), norm (E,))


class GCNConv(nn.Module):
    """x (K, d_in) -> (K, d_out): D^-1/2 (A + I) D^-1/2 x W + b over a weighted directed graph."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out, bias=False)
        self.bias = nn.Parameter(torch.zeros(d_out))
        nn.init.xavier_uniform_(self.lin.weight)

    @staticmethod
    def normalised_edges(graph: Graph, num_nodes: int) -> Edges:
        """(source, target, norm) after adding the missing self loops (weight 1)."""
        source, target = graph.edge_index
        weight = graph.edge_weight.float()
        has_loop = torch.zeros(num_nodes, dtype=torch.bool)
        has_loop[source[source == target]] = True
        missing = (~has_loop).nonzero().flatten()
        source = torch.cat([source, missing])
        target = torch.cat([target, missing])
        weight = torch.cat([weight, torch.ones(len(missing))])
        degree = torch.zeros(num_nodes).index_add_(0, target, weight)
        inv = degree.pow(-0.5).masked_fill(degree == 0, 0.0)
        return source, target, inv[source] * weight * inv[target]

    def forward(self, x: torch.Tensor, edges: Edges) -> torch.Tensor:
        """x (K, d_in) -> (K, d_out). The dense product x W runs where x is, the scatter-add where
        the edges are (KA-MIG's fold keeps them on the CPU: CUDA's index_add_ is not
        deterministic); where both are on one device nothing moves."""
        source, target, norm = edges
        h = self.lin(x).to(norm.device)
        out = torch.zeros_like(h).index_add_(0, target, h[source] * norm[:, None].to(h.dtype))
        return out.to(x.device) + self.bias


class PointwiseConv(nn.Module):
    """Upstream's ``nn.Conv1d(d_in, d_out, 1)`` on (B, d, N), which is a per-token linear: x (..., d_in)
    -> (..., d_out) = ``F.linear(x, weight[..., 0], bias)``. Parameters keep the Conv1d shapes
    (weight (d_out, d_in, 1), bias (d_out,)); ``zero=True`` initialises both to zero (upstream's
    ``zero_module``), otherwise Conv1d's default init."""

    def __init__(self, d_in: int, d_out: int, zero: bool = False) -> None:
        super().__init__()
        conv = nn.Conv1d(d_in, d_out, 1)
        self.weight, self.bias = conv.weight, conv.bias
        if zero:
            nn.init.zeros_(self.weight)
            nn.init.zeros_(self.bias)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight[..., 0], self.bias)


class GraphEncoder(nn.Module):
    """Three GCNConv + ReLU layers (``conv1..3``, upstream's ``GCN``); returns the mean of the three
    outputs (K, d)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3 = (GCNConv(width, width) for _ in range(3))

    def forward(self, x: torch.Tensor, edges: Edges) -> torch.Tensor:
        outputs = []
        for layer in (self.conv1, self.conv2, self.conv3):
            x = torch.relu(layer(x, edges))
            outputs.append(x)
        return torch.stack(outputs).mean(0)


class NegativePrior(nn.Module):
    """P^c (C, N, d) from the incompatibility indicator (C, N, K) and the code embeddings (K, d);
    W is ``conv1`` (upstream's ``PosNegCodebook.conv1``, a 1x1 conv with bias)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = PointwiseConv(width, width)

    @staticmethod
    def weights(incompatible: torch.Tensor) -> torch.Tensor:
        """Row-normalised indicator (C, N, K) fp32 of the bool indicator (C, N, K): 1/|I_{c,i}| on
        incompatible tokens (0 rows stay 0)."""
        counts = incompatible.sum(-1, keepdim=True).clamp_min(1)
        return incompatible.float().div_(counts)  # one fp32 copy: (1000, 256, 1024) is 1 GB on ImageNet

    def forward(self, incompatible_weights: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return incompatible_weights @ self.conv1(embeddings)

    @staticmethod
    def lookup(prior: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """P^c for each label (B, N, d); NULL_LABEL gives zeros."""
        safe = labels.clamp_min(0)
        return prior[safe] * (labels != NULL_LABEL).to(prior.dtype)[:, None, None]
