"""TiTok's U-ViT generator (1d-tokenizer ``modeling/maskgit.py`` ``UViTBert``, S-128) with upstream's state-dict
names and our forward.

Upstream: bytedance/1d-tokenizer commit 942a96f, ``UViTBert`` as ``configs/infer/TiTok/titok_s128.yaml``
builds it: N = 128 tokens, 1,024 wide, ``num_hidden_layers`` 20 = 10 in-blocks + a mid block +
10 out-blocks (21 hooked blocks), 16 heads, MLP 4,096 (``mlp_ratio`` = intermediate / hidden),
no qkv bias, K = 4,096 codes, C = 1,000 classes: 257 keys, 294,990,848 parameters. The blocks
are ``modeling/modules/blocks.py`` ``UViTBlock``, whose names and numerics are AutoNAT's U-ViT
block's (norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2, skip_linear), so this module uses
:class:`migbench.backbones.autonat.uvit.Block`. Upstream's attention runs SDPA on ``qkv.float()``
(its ``qk_scale``/``scale`` are unused): in fp32 that is the same SDPA, and under autocast SDPA
casts back to the autocast dtype, so the ``.float()`` changes nothing in either precision. The
names and shapes of :meth:`state_dict` are upstream's exactly (``pos_embed`` first, as upstream
registers it on the module itself); the forward is ours, with hook sites.

Vocabulary V = K + C + 2 (one ``embeddings`` table): codes ``0..K-1``, [MASK] ``K``, class c
``K + 1 + c``, the null class ``K + 1 + C``; BLANK_LABEL puts [MASK] in the class slot.

Forward, ids (B, N) and labels (B,) -> Prediction(logits (B, N, K), last_block (B, L, d)), L = N + 1,
the class token **first** (position 0, ``token_slice`` = 1..N)::

    x = embeddings[[class_id, ids]] + pos_embed[:, :L]      (B, L, d)  site embed (no LayerNorm, no dropout)
    block k = 0..depth-1 in call order (in_blocks.0..h-1, mid_block, out_blocks.0..h-1; h = layers / 2):
        x = x                                                         site block_in.k
        out_blocks.j only: x = skip_linear([x, s])   s = in_blocks.(h-1-j)'s output
        u = norm1(x); v = u W_v^T                                     site attn_value.k
        x = x + proj(softmax(q k^T / sqrt(d / heads)) v)
        x = x + fc2(GELU(fc1(norm2(x))))                              site block_out.k
    x = norm(x)                          eps 1e-5                     site final_hidden
    logits = lm_head(x[:, 1:])           untied Linear(d, K)          site logits

``last_block`` is the last out-block's output before ``norm``. Every LayerNorm has eps 1e-5,
GELU is exact. Upstream's UViTBert has **no dropout** anywhere (its blocks get ``drop=0``,
``attn_drop=0``; the config's ``dropout``/``attn_drop`` reach only ImageBert's BERT), so none
acts in training either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from migbench.backbones.autonat.uvit import Block, run_blocks
from migbench.backbones.titok.image_bert import titok_layout
from torch import nn

from migbench.api import HookSet, Prediction, VocabLayout, forward_context
from migbench.precision import run_head

UPSTREAM = "bytedance/1d-tokenizer 942a96fbdd873780179d1b78d5462911528bf8c8 modeling/maskgit.py UViTBert"
INIT_STD = 0.02


@dataclass(frozen=True)
class UViTBertConfig:
    """Architecture in upstream's names (``model.generator.*``; ``num_classes`` is its
    ``condition_num_classes``); defaults are S-128 (``configs/infer/TiTok/titok_s128.yaml``).
    ``num_hidden_layers`` is upstream's (even): half in-blocks, a mid block, half out-blocks."""

    image_seq_len: int = 128
    hidden_size: int = 1024
    num_hidden_layers: int = 20
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    codebook_size: int = 4096
    num_classes: int = 1000

    def __post_init__(self) -> None:
        sizes = {"image_seq_len": self.image_seq_len, "hidden_size": self.hidden_size,
                 "num_hidden_layers": self.num_hidden_layers, "num_attention_heads": self.num_attention_heads,
                 "intermediate_size": self.intermediate_size, "codebook_size": self.codebook_size,
                 "num_classes": self.num_classes}
        bad = [f"{name}={value}" for name, value in sizes.items() if value < 1]
        if bad:
            raise ValueError(f"UViTBertConfig sizes must be positive: {', '.join(bad)}")
        if self.num_hidden_layers % 2 or self.hidden_size % self.num_attention_heads:
            raise ValueError(f"UViTBertConfig: num_hidden_layers {self.num_hidden_layers} must be even and "
                             f"num_attention_heads {self.num_attention_heads} must divide hidden_size {self.hidden_size}")

    @classmethod
    def s128(cls) -> UViTBertConfig:
        """TiTok S-128's generator (the defaults)."""
        return cls()

    @classmethod
    def tiny(cls) -> UViTBertConfig:
        """16 tokens, K = 16 codes, 10 classes (V = 28), width 32, 4 layers (2 in-blocks, the mid
        block, 2 out-blocks) of 2 heads, MLP 64 (the configuration of the golden fixture)."""
        return cls(image_seq_len=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                   codebook_size=16, num_classes=10)

    @property
    def vocab_size(self) -> int:
        """K codes, [MASK], C classes and the null class."""
        return titok_layout(self.codebook_size, self.num_classes).vocab_size

    @property
    def blocks(self) -> int:
        """Hooked blocks in call order: the in-blocks, the mid block, the out-blocks."""
        return self.num_hidden_layers + 1

    @property
    def mlp_hidden(self) -> int:
        """The MLP width, ``int(hidden * (intermediate / hidden))`` as upstream's UViTBlock computes it."""
        return int(self.hidden_size * (self.intermediate_size / self.hidden_size))

    def layout(self) -> VocabLayout:
        return titok_layout(self.codebook_size, self.num_classes)


class UViTBert(nn.Module):
    """``forward(ids (B, N), labels (B,)) -> Prediction(logits (B, N, K), last_block (B, N + 1, d))``.

    Attributes under upstream's names: ``pos_embed`` (1, N + 1, d), ``embeddings`` (V, d),
    ``in_blocks``, ``mid_block``, ``out_blocks`` (with ``skip_linear``), ``norm``, ``lm_head``.
    ``head`` is ``lm_head`` unless a module was assigned to ``head`` (Token-Critic's), which then
    is a registered submodule and replaces it. Initialised as upstream's ``_init_weights``
    (Linear weights, ``embeddings`` and ``pos_embed`` truncated N(0, 0.02^2) on [-2, 2], zero
    biases, LayerNorms 1 and 0)."""

    def __init__(self, config: UViTBertConfig = UViTBertConfig()) -> None:
        super().__init__()
        self.config = config
        self.layout = config.layout()
        self.depth, self.width = config.blocks, config.hidden_size
        d, half = config.hidden_size, config.num_hidden_layers // 2
        block = (d, config.num_attention_heads, config.mlp_hidden)
        self.embeddings = nn.Embedding(config.vocab_size, d)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.image_seq_len + 1, d))
        self.in_blocks = nn.ModuleList(Block(*block, skip=False) for _ in range(half))
        self.mid_block = Block(*block, skip=False)
        self.out_blocks = nn.ModuleList(Block(*block, skip=True) for _ in range(half))
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, config.codebook_size)
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, std=INIT_STD)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    @property
    def head(self) -> nn.Module:
        """The head applied to the normed image rows: an assigned ``head`` module if any, else ``lm_head``."""
        assigned = self._modules.get("head")
        return assigned if assigned is not None else self.lm_head

    @property
    def seq_len(self) -> int:
        return self.config.image_seq_len

    def blocks(self) -> list[Block]:
        """The ``depth`` blocks in call order: in_blocks, mid_block, out_blocks."""
        return [*self.in_blocks, self.mid_block, *self.out_blocks]

    def describe(self) -> dict[str, object]:
        return {"kind": "titok_uvit_bert", **asdict(self.config), "blocks": self.depth, "seq_len": self.seq_len,
                "class_position": "first", "head": "lm_head (untied)", "null_class": "own id K+1+C",
                "blank_class": "mask", "upstream": UPSTREAM}

    def fresh(self) -> UViTBert:
        """An untrained network of this architecture, initialised as upstream's (global RNG)."""
        return UViTBert(self.config)

    def token_embeddings(self) -> torch.Tensor:
        """Input embeddings (K, d) of the K image codes: raw rows of ``embeddings`` (before ``pos_embed``)."""
        return self.embeddings.weight[: self.layout.codebook_size]

    def value_projection(self, index: int) -> tuple[torch.Tensor, None]:
        """Block ``index``'s (call order) W_v (d, d), a slice of its ``attn.qkv.weight``; no bias."""
        return self.blocks()[index].attn.value_projection()

    def forward(self, ids: torch.Tensor, labels: torch.Tensor, hooks: HookSet | None = None,
                branch: str = "main") -> Prediction:
        n = self.seq_len
        hooks, ctx = forward_context(self, ids, labels, hooks, branch, slice(1, n + 1))
        seq = torch.cat([self.layout.class_ids(labels)[:, None], ids], dim=1)
        x = hooks("embed", self.embeddings(seq) + self.pos_embed[:, : n + 1], ctx)
        x = last_block = run_blocks(self.in_blocks, self.mid_block, self.out_blocks, x, hooks, ctx)
        x = hooks("final_hidden", self.norm(x), ctx)
        logits = hooks("logits", run_head(hooks.head(self.head), x[:, ctx.token_slice]), ctx)
        return Prediction(logits=logits, last_block=last_block)
