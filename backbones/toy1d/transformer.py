"""A tiny bidirectional transformer laid out like the public checkpoints, not like ours.

What differs from :mod:`migbench.backbones.fmnist.transformer` (and is the point of this family):

- the class token comes **last** (``class_position="last"``, ``token_slice=slice(0, N)``), as in
  valeoai's MaskGIT; BLANK_LABEL puts the [MASK] id in that slot (``layout.blank_id``);
- the head is **tied** to the input embeddings, as valeoai's: ``logits = LN(h) @ E^T + bias``
  with a per-position bias (N, V), scored over the whole input vocabulary V and then sliced to
  the K image codes. It is one module (:class:`TiedHead`) holding the shared embedding table, so
  ``copy.deepcopy(backbone.head)`` copies all of it, as KA-MIG's upstream copies ``mlm_layer``;
- attention has separate ``query``/``key``/``value`` linears (BERT's names, as open-muse and
  TiTok), and the embeddings are ``word_embeddings``/``position_embeddings``: a method that
  reaches for ``tok_emb`` or a fused ``qkv`` fails here instead of silently working.

Shapes: ids (B, N), labels (B,), hidden (B, L, d) with L = N + 1 and the class token at L - 1,
logits (B, N, K). Hook sites, each fired exactly once per forward (:func:`migbench.api.hook_sites`):
``embed`` (B, L, d) after word + position embeddings; ``block_in.{i}``; ``attn_value.{i}``
(B, L, d) the ``value`` projection of block i's normalised input; ``block_out.{i}``;
``final_hidden`` (B, L, d) the last block's output (the final LayerNorm belongs to the head, as
valeoai's ``last_layer``); ``logits`` (B, N, K) from ``hooks.head(self.head)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from migbench.backbones.common.attention import multi_head_attention
from torch import nn

from migbench.api import HookContext, HookSet, Prediction, VocabLayout, forward_context
from migbench.precision import run_head


@dataclass(frozen=True)
class Toy1DConfig:
    """Architecture: two blocks of width 32 over N = 16 image tokens and K = 16 codes."""

    codebook_size: int = 16
    num_tokens: int = 16
    num_classes: int = 10
    width: int = 32
    depth: int = 2
    heads: int = 2
    mlp_ratio: int = 4

    def layout(self) -> VocabLayout:
        """valeoai's vocabulary: codes 0..K-1, [MASK] = K, classes K+1..K+C, the null class K+1+C."""
        k, c = self.codebook_size, self.num_classes
        return VocabLayout(codebook_size=k, mask_id=k, num_classes=c, class_offset=k + 1,
                           null_class_id=k + 1 + c, vocab_size=k + 2 + c, class_position="last")


class SelfAttention(nn.Module):
    """Multi-head attention with separate ``query``, ``key``, ``value`` and ``output`` linears:
    (B, L, d) -> (B, L, d); the value projection passes through site ``attn_value.{index}``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.output = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, hooks: HookSet, ctx: HookContext, index: int) -> torch.Tensor:
        value = hooks(f"attn_value.{index}", self.value(x), ctx)
        return self.output(multi_head_attention(self.query(x), self.key(x), value, self.heads))


class Layer(nn.Module):
    """Pre-LN block: x + Attn(LN(x)), then x + MLP(LN(x)). (B, L, d) -> (B, L, d)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(width)
        self.attention = SelfAttention(width, heads)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(),
                                 nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor, hooks: HookSet, ctx: HookContext, index: int) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), hooks, ctx, index)
        return x + self.mlp(self.mlp_norm(x))


class TiedHead(nn.Module):
    """hidden (B, N, d) -> logits (B, N, K): ``LN(h) @ E^T + bias`` over the V input ids, sliced to
    the K image codes. ``embeddings`` is the backbone's own input table (V, d), shared, not copied;
    ``bias`` is per position (N, V)."""

    def __init__(self, embeddings: nn.Embedding, num_tokens: int, codebook_size: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embeddings.embedding_dim)
        self.embeddings = embeddings
        self.bias = nn.Parameter(torch.zeros(num_tokens, embeddings.num_embeddings))
        self.codebook_size = codebook_size

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.norm(hidden) @ self.embeddings.weight.t() + self.bias
        return logits[..., : self.codebook_size]


class Toy1DTransformer(nn.Module):
    """``forward(ids (B, N), labels (B,)) -> Prediction(logits (B, N, K), last_block (B, N + 1, d))``."""

    def __init__(self, config: Toy1DConfig = Toy1DConfig()) -> None:
        super().__init__()
        self.config = config
        self.layout = config.layout()
        self.depth, self.width = config.depth, config.width
        self.word_embeddings = nn.Embedding(self.layout.vocab_size, config.width)
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_tokens + 1, config.width))
        self.layers = nn.ModuleList(Layer(config.width, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.head = TiedHead(self.word_embeddings, config.num_tokens, config.codebook_size)
        for name, parameter in self.named_parameters():  # small random values, biases too (so each matters)
            if not name.endswith("norm.weight"):
                nn.init.trunc_normal_(parameter, std=0.02)

    @property
    def seq_len(self) -> int:
        return self.config.num_tokens

    def describe(self) -> dict[str, object]:
        return {"kind": "toy1d_transformer", **asdict(self.config), "class_position": "last", "head": "tied",
                "blank_class": "mask"}

    def token_embeddings(self) -> torch.Tensor:
        """Input embeddings (K, d) of the K image codes (rows of the tied table)."""
        return self.word_embeddings.weight[: self.layout.codebook_size]

    def value_projection(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Block ``index``'s ``value`` linear: weight (d, d) and bias (d,)."""
        value = self.layers[index].attention.value
        return value.weight, value.bias

    def forward(self, ids: torch.Tensor, labels: torch.Tensor, hooks: HookSet | None = None,
                branch: str = "main") -> Prediction:
        n = self.seq_len
        hooks, ctx = forward_context(self, ids, labels, hooks, branch, slice(0, n))
        seq = torch.cat([ids, self.layout.class_ids(labels)[:, None]], dim=1)
        x = hooks("embed", self.word_embeddings(seq) + self.position_embeddings, ctx)
        for i, layer in enumerate(self.layers):
            x = hooks(f"block_in.{i}", x, ctx)
            x = hooks(f"block_out.{i}", layer(x, hooks, ctx, i), ctx)
        last_block = x
        x = hooks("final_hidden", x, ctx)
        logits = hooks("logits", run_head(hooks.head(self.head), x[:, ctx.token_slice]), ctx)
        return Prediction(logits=logits, last_block=last_block)
