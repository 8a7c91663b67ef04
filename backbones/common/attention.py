"""Multi-head scaled dot-product attention on already projected queries, keys and values, the
step every family's attention shares (its projections and names are the family's own)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def multi_head_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int,
                         dropout_p: float = 0.0) -> torch.Tensor:
    """q, k, v (B, L, d) split into ``heads`` contiguous heads of d / heads ->
    softmax(q_h k_h^T / sqrt(d / heads)) v_h per head (SDPA, dropout ``dropout_p`` on the weights),
    heads concatenated: (B, L, d)."""
    b, length, d = query.shape
    q, k, v = (t.reshape(b, length, heads, d // heads).transpose(1, 2) for t in (query, key, value))
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p).transpose(1, 2).reshape(b, length, d)
