"""A small class-conditional bidirectional transformer (MaskGIT-style token predictor).

Input: image ids (B, N) with ``layout.mask_id`` at masked positions and labels (B,) (NULL_LABEL
for the unconditional branch). The class token is prepended (``class_position="first"``),
learned position embeddings are added, ``depth`` pre-LN blocks run, and a final LayerNorm plus a
linear head give logits over the K image codes for the N image positions.

Hook sites, each called exactly once per forward (see :func:`migbench.api.hook_sites`):
``embed`` (B, L, d) after token+position embeddings; ``block_in.{i}`` (B, L, d) the input of
block i; ``attn_value.{i}`` (B, L, d) the value projection of block i's attention, before the
heads split (self-guidance adds its top-down signal here); ``block_out.{i}`` (B, L, d);
``final_hidden`` (B, L, d) after the final norm; ``logits`` (B, N, K) from ``hooks.head(self.head)``
(the backbone's linear head unless a method replaced it). BLANK_LABEL puts the [MASK] embedding in
the class slot.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from migbench.backbones.common.attention import multi_head_attention
from torch import nn

from migbench.api import HookContext, HookSet, Prediction, VocabLayout, forward_context
from migbench.precision import run_head


@dataclass(frozen=True)
class TransformerConfig:
    """Architecture; the defaults are the committed Fashion-MNIST backbone (about 5M parameters)."""

    codebook_size: int = 512
    num_tokens: int = 64
    num_classes: int = 10
    width: int = 256
    depth: int = 6
    heads: int = 8
    mlp_ratio: int = 4
    null_is_mask: bool = False  # eMIGM's "CFG with mask": the null class shares the mask embedding

    def layout(self) -> VocabLayout:
        k, c = self.codebook_size, self.num_classes
        return VocabLayout(codebook_size=k, mask_id=k, num_classes=c, class_offset=k + 1,
                           null_class_id=k if self.null_is_mask else k + 1 + c,
                           vocab_size=k + 2 + c, class_position="first")


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x)). (B, L, d) -> (B, L, d)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(),
                                 nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor, hooks: HookSet, ctx: HookContext, index: int) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        v = hooks(f"attn_value.{index}", v, ctx)
        x = x + self.proj(multi_head_attention(q, k, v, self.heads))
        return x + self.mlp(self.norm2(x))


class MaskedTransformer(nn.Module):
    """The token predictor. ``forward(ids (B,N), labels (B,)) -> Prediction(logits (B,N,K), last_block (B,L,d))``."""

    def __init__(self, config: TransformerConfig = TransformerConfig()) -> None:
        super().__init__()
        self.config = config
        self.layout = config.layout()
        self.depth, self.width = config.depth, config.width
        self.tok_emb = nn.Embedding(self.layout.vocab_size, config.width)
        self.pos_emb = nn.Parameter(torch.zeros(1, config.num_tokens + 1, config.width))
        self.blocks = nn.ModuleList(Block(config.width, config.heads, config.mlp_ratio)
                                    for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.codebook_size)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_emb, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.trunc_normal_(module.weight, std=0.02)

    @property
    def seq_len(self) -> int:
        return self.config.num_tokens

    def describe(self) -> dict[str, object]:
        return {"kind": "masked_transformer", **asdict(self.config)}

    def fresh(self) -> MaskedTransformer:
        """An untrained network of this architecture, initialised as for training (global RNG)."""
        return MaskedTransformer(self.config)

    def token_embeddings(self) -> torch.Tensor:
        """Input embeddings (K, d) of the K image codes."""
        return self.tok_emb.weight[: self.layout.codebook_size]

    def value_projection(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Block ``index``'s value projection: the last third of its fused qkv, weight (d, d) and bias (d,)."""
        qkv = self.blocks[index].qkv
        return qkv.weight[2 * self.width:], qkv.bias[2 * self.width:]

    def forward(self, ids: torch.Tensor, labels: torch.Tensor, hooks: HookSet | None = None,
                branch: str = "main") -> Prediction:
        hooks, ctx = forward_context(self, ids, labels, hooks, branch, slice(1, None))
        seq = torch.cat([self.layout.class_ids(labels)[:, None], ids], dim=1)
        x = hooks("embed", self.tok_emb(seq) + self.pos_emb, ctx)
        for i, block in enumerate(self.blocks):
            x = hooks(f"block_in.{i}", x, ctx)
            x = hooks(f"block_out.{i}", block(x, hooks, ctx, i), ctx)
        last_block = x
        x = hooks("final_hidden", self.norm(x), ctx)
        logits = hooks("logits", run_head(hooks.head(self.head), x[:, ctx.token_slice]), ctx)
        return Prediction(logits=logits, last_block=last_block)
