"""AutoNAT-L's U-ViT (ImprovedNAT ``libs/nat_model.py`` ``UViT``) with upstream's state-dict names and our forward.

Upstream: LeapLabTHU/ImprovedNAT commit 2ca9994, ``libs/nat_model.py`` ``UViT`` as
``configs/AutoNAT_L.yaml`` builds it (16 x 16 tokens, K = 1,024 codes, 768 wide, ``depth`` 24 =
12 in-blocks + a mid block + 12 out-blocks, 8 heads, MLP ratio 4, no qkv bias, 1,001 context
rows, long skips on): 314 keys, 193,655,297 parameters. KA-MIG (GuotaoLiang/KA-MIG 0b4ceb1)
ships the same file byte for byte. The names and shapes of :meth:`state_dict` are upstream's
exactly, so ``nnet_ema.pth`` loads strictly; the forward is ours, with hook sites.

Vocabulary (our numbering; upstream has two tables): codes ``0..K-1`` and the mask ``K`` index
``token_emb`` (K + 1 rows); class c is id ``K + 1 + c`` and the null class id ``K + 1 + C``,
which index the separate ``context_embed`` table at row ``id - (K + 1)``: rows ``0..C-1`` the
classes, row C (upstream's context 1000) the null class. The context table has no [MASK] row,
so BLANK_LABEL shows the null class too (``VocabLayout.blank_class_id``; ``describe()`` says so).

Forward, ids (B, N) and labels (B,) -> Prediction(logits (B, N, K), last_block (B, L, d)), L = N + 1,
the class token **first** (position 0, ``token_slice`` = 1..N)::

    e = [ctx.word[c] + ctx.pos[0], tok.word[ids] + tok.pos[0..N-1]]    (B, L, d)  site embed
    x = [Drop(LN_ctx(e_0)), Drop(LN_tok(e_1..N))]      both LayerNorms eps 1e-6, dropout 0 / 0.1
    block k = 0..depth in call order (in_blocks.0..h-1, mid_block, out_blocks.0..h-1; h = depth/2):
        x = x                                                           site block_in.k
        out_blocks.j only: x = skip_linear([x, s])   s = skips.pop() = in_blocks.(h-1-j)'s output
        u = LN1(x); v = u W_v^T                                          site attn_value.k
        x = x + proj(softmax(q k^T / sqrt(d / heads)) v)
        x = x + fc2(GELU(fc1(LN2(x))))                                   site block_out.k
        in_blocks only: skips.append(x)
    x = norm(x)                                                         site final_hidden
    logits = mlm_layer(x[:, 1:])                                        site logits

``block_in.k`` is where KA-MIG's ``UViTGraphAdapter`` adds its fusion (``x = x + ...`` before
each block call, hence before ``skip_linear`` for out-blocks). ``last_block`` is the last
out-block's output before ``norm``. The head (:class:`TiedMlmHead`) is upstream's ``mlm_layer``,
``LN(GELU(fc(x))) @ word_embeddings.weight^T + bias``, against the detached (upstream:
``.data.detach()``) token table; upstream scores all K + 1 ids and keeps ``[:, 1:, :K]``, we
score the K code columns only. ``norm`` is not part of the head: KA-MIG fine-tunes ``mlm_layer``
and keeps ``norm`` frozen. All other LayerNorms use eps 1e-5, GELU is exact (erf), attention
and MLP dropout are 0 and the embedding dropouts act only in training, as upstream's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from migbench.backbones.common.attention import multi_head_attention
from torch import nn

from migbench.api import HookContext, HookSet, Prediction, VocabLayout, forward_context
from migbench.precision import run_head

UPSTREAM = "LeapLabTHU/ImprovedNAT 2ca99946b2ad1969672d05213d269e1256249f6b libs/nat_model.py UViT"
EMBED_EPS = 1e-6  # eps of both embedding LayerNorms (upstream's BertEmbeddings); every other LayerNorm keeps 1e-5
INIT_STD = 0.02


@dataclass(frozen=True)
class UViTConfig:
    """Architecture; defaults are AutoNAT-L (``configs/AutoNAT_L.yaml``).

    ``side`` is tokens per side (upstream's ``img_size``), N = side^2; ``depth`` is upstream's
    (even): depth / 2 in-blocks, a mid block and depth / 2 out-blocks, depth + 1 hooked blocks.
    ``num_classes`` counts real classes: the context table has ``num_classes + 1`` rows (upstream's
    ``num_classes`` 1001). ``dropout`` is the image-embedding dropout (the context's is 0)."""

    side: int = 16
    embed_dim: int = 768
    depth: int = 24
    num_heads: int = 8
    mlp_ratio: float = 4.0
    codebook_size: int = 1024
    num_classes: int = 1000
    dropout: float = 0.1

    def __post_init__(self) -> None:
        sizes = {"side": self.side, "embed_dim": self.embed_dim, "depth": self.depth, "num_heads": self.num_heads,
                 "codebook_size": self.codebook_size, "num_classes": self.num_classes}
        bad = [f"{name}={value}" for name, value in sizes.items() if value < 1]
        if bad:
            raise ValueError(f"UViTConfig sizes must be positive: {', '.join(bad)}")
        if self.depth % 2 or self.embed_dim % self.num_heads:
            raise ValueError(f"UViTConfig: depth {self.depth} must be even and num_heads {self.num_heads} must "
                             f"divide embed_dim {self.embed_dim}")
        if self.mlp_hidden < 1:
            raise ValueError(f"UViTConfig: mlp_ratio {self.mlp_ratio} gives no MLP width")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UViTConfig: dropout must lie in [0, 1), got {self.dropout}")

    @classmethod
    def tiny(cls) -> UViTConfig:
        """4 x 4 = 16 tokens, K = 16 codes, 10 classes, width 16, depth 4 (2 in-blocks, the mid block,
        2 out-blocks), 2 heads, MLP 64 (the configuration of the golden fixture)."""
        return cls(side=4, embed_dim=16, depth=4, num_heads=2, codebook_size=16, num_classes=10)

    @property
    def num_tokens(self) -> int:
        """N, the image tokens."""
        return self.side ** 2

    @property
    def blocks(self) -> int:
        """Hooked blocks in call order: depth / 2 in-blocks, the mid block, depth / 2 out-blocks."""
        return self.depth + 1

    @property
    def mlp_hidden(self) -> int:
        """The MLP width, ``int(embed_dim * mlp_ratio)`` as upstream's Block computes it."""
        return int(self.embed_dim * self.mlp_ratio)

    def layout(self) -> VocabLayout:
        """Codes 0..K-1, [MASK] = K, classes K+1..K+C and the null class K+1+C (context rows 0..C),
        the class token first; BLANK_LABEL shows the null class (the context table has no mask row)."""
        k, c = self.codebook_size, self.num_classes
        return VocabLayout(codebook_size=k, mask_id=k, num_classes=c, class_offset=k + 1, null_class_id=k + 1 + c,
                           vocab_size=k + 2 + c, class_position="first", blank_class_id=k + 1 + c)


class Embeddings(nn.Module):
    """Upstream's ``BertEmbeddings`` parameters (``word_embeddings``, ``position_embeddings``,
    ``LayerNorm`` eps 1e-6, ``dropout``), split in two so site ``embed`` sits between them:
    :meth:`sums` ids (B, n) -> word[ids] + pos[0..n-1] (B, n, d); ``forward`` -> Drop(LN(sums))."""

    def __init__(self, rows: int, width: int, positions: int, dropout: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(rows, width)
        self.position_embeddings = nn.Embedding(positions, width)
        self.LayerNorm = nn.LayerNorm(width, eps=EMBED_EPS)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.word_embeddings.weight, std=INIT_STD)
        nn.init.normal_(self.position_embeddings.weight, std=INIT_STD)

    def sums(self, ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(ids) + self.position_embeddings.weight[: ids.shape[1]]

    def forward(self, sums: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.LayerNorm(sums))


class Attention(nn.Module):
    """Upstream's ``Attention`` (qkv without bias, proj with bias, scale head_dim^-0.5, no dropout):
    (B, L, d) -> (B, L, d). ``qkv.weight`` (3d, d) stacks [W_q; W_k; W_v], heads contiguous in each."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def value_projection(self) -> tuple[torch.Tensor, None]:
        """W_v (d, d), a live view of rows 2d..3d of ``qkv.weight``, and no bias."""
        width = self.proj.in_features
        return self.qkv.weight[2 * width:], None

    def forward(self, u: torch.Tensor, hooks: HookSet, ctx: HookContext, index: int) -> torch.Tensor:
        w_q, w_k, w_v = self.qkv.weight.chunk(3)
        value = hooks(f"attn_value.{index}", F.linear(u, w_v), ctx)
        return self.proj(multi_head_attention(F.linear(u, w_q), F.linear(u, w_k), value, self.heads))


class Mlp(nn.Module):
    """timm 0.3.2's ``Mlp`` (its dropout is 0): fc2(GELU(fc1(x))), GELU exact. (B, L, d) -> (B, L, d)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Upstream's U-ViT ``Block``: out-blocks first replace x by ``skip_linear([x, skip])`` (x first,
    no residual), then pre-norm x + Attn(LN1(x)), x + Mlp(LN2(x)). (B, L, d) -> (B, L, d)."""

    def __init__(self, width: int, heads: int, hidden: int, skip: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, hidden)
        self.skip_linear = nn.Linear(2 * width, width) if skip else None

    def forward(self, x: torch.Tensor, hooks: HookSet, ctx: HookContext, index: int,
                skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x), hooks, ctx, index)
        return x + self.mlp(self.norm2(x))


def run_blocks(in_blocks: nn.ModuleList, mid_block: Block, out_blocks: nn.ModuleList, x: torch.Tensor,
               hooks: HookSet, ctx: HookContext) -> torch.Tensor:
    """The U-ViT's blocks in call order (in-blocks, the mid block, out-blocks), each out-block
    given the matching in-block's output (``skips.pop()``): x (B, L, d) -> the last out-block's
    output. Block k fires sites ``block_in.k`` before it (before ``skip_linear``, where KA-MIG
    fuses) and ``block_out.k`` after it."""

    def block(index: int, module: Block, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = hooks(f"block_in.{index}", x, ctx)
        return hooks(f"block_out.{index}", module(x, hooks, ctx, index, skip), ctx)

    skips = []
    for index, module in enumerate(in_blocks):
        x = block(index, module, x)
        skips.append(x)
    x = block(len(in_blocks), mid_block, x)
    for j, module in enumerate(out_blocks):
        x = block(len(in_blocks) + 1 + j, module, x, skips.pop())
    return x


class MlmLayer(nn.Module):
    """Upstream's ``MlmLayer`` parameters: ``fc`` (d, d), ``ln`` (eps 1e-5), ``bias`` (1, 1, V).
    ``forward(x (B, n, d), table (k, d)) -> LN(GELU(fc(x))) @ table^T + bias[..., :k]`` (B, n, k)."""

    def __init__(self, width: int, vocab_size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.gelu = nn.GELU()
        self.ln = nn.LayerNorm(width)
        self.bias = nn.Parameter(torch.zeros(1, 1, vocab_size))

    def forward(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return self.ln(self.gelu(self.fc(x))) @ table.t() + self.bias[..., : table.shape[0]]


class TiedMlmHead(nn.Module):
    """hidden (B, n, d) -> logits (B, n, K) = mlm_layer(h, word_embeddings.weight[:K].detach()).

    Upstream scores all K + 1 ids and slices the K codes; computed alone they are the same sums.
    No gradient reaches the table through the head (upstream's ``.data.detach()``). It holds the
    backbone's own ``mlm_layer`` and ``token_emb.word_embeddings`` (shared, not copied), so
    ``copy.deepcopy`` of it copies both, as KA-MIG copies (and fine-tunes) the whole ``mlm_layer``."""

    def __init__(self, mlm_layer: MlmLayer, word_embeddings: nn.Embedding, codebook_size: int) -> None:
        super().__init__()
        self.mlm_layer, self.word_embeddings = mlm_layer, word_embeddings
        self.codebook_size = codebook_size

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlm_layer(hidden, self.word_embeddings.weight[: self.codebook_size].detach())


class UViT(nn.Module):
    """``forward(ids (B, N), labels (B,)) -> Prediction(logits (B, N, K), last_block (B, N + 1, d))``.

    Attributes under upstream's names: ``token_emb`` (K + 1 rows, N positions), ``context_embed``
    (C + 1 rows, 1 position), ``in_blocks``, ``mid_block``, ``out_blocks`` (with ``skip_linear``),
    ``norm``, ``mlm_layer``. ``head`` is a :class:`TiedMlmHead` over ``mlm_layer`` and
    ``token_emb.word_embeddings``, kept out of the state dict; a module assigned to ``head``
    (Token-Critic's) is a registered submodule and replaces it. ``depth`` = 25 hooked blocks at
    full size. Initialised as upstream trains it (embeddings N(0, 0.02), Linear weights truncated
    N(0, 0.02) with zero biases, LayerNorms 1 and 0, zero ``mlm_layer.bias``)."""

    def __init__(self, config: UViTConfig = UViTConfig()) -> None:
        super().__init__()
        self.config = config
        self.layout = config.layout()
        self.depth, self.width = config.blocks, config.embed_dim
        d, half = config.embed_dim, config.depth // 2
        block = (d, config.num_heads, config.mlp_hidden)
        self.token_emb = Embeddings(config.codebook_size + 1, d, config.num_tokens, config.dropout)
        self.context_embed = Embeddings(config.num_classes + 1, d, 1, 0.0)
        self.in_blocks = nn.ModuleList(Block(*block, skip=False) for _ in range(half))
        self.mid_block = Block(*block, skip=False)
        self.out_blocks = nn.ModuleList(Block(*block, skip=True) for _ in range(half))
        self.norm = nn.LayerNorm(d)
        self.mlm_layer = MlmLayer(d, config.codebook_size + 1)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def head(self) -> nn.Module:
        """The head applied to the normed image rows: an assigned ``head`` module if any, else the
        tied head, rebuilt whenever a module it holds was replaced."""
        assigned = self._modules.get("head")
        if assigned is not None:
            return assigned
        tied = self.__dict__.get("_tied_head")
        if tied is None or tied.mlm_layer is not self.mlm_layer \
                or tied.word_embeddings is not self.token_emb.word_embeddings:
            tied = TiedMlmHead(self.mlm_layer, self.token_emb.word_embeddings, self.layout.codebook_size)
            self.__dict__["_tied_head"] = tied  # a plain attribute: no second copy of its keys in state_dict()
        return tied

    @property
    def seq_len(self) -> int:
        return self.config.num_tokens

    def blocks(self) -> list[Block]:
        """The depth + 1 blocks in call order: in_blocks, mid_block, out_blocks."""
        return [*self.in_blocks, self.mid_block, *self.out_blocks]

    def describe(self) -> dict[str, object]:
        return {"kind": "autonat_uvit", **asdict(self.config), "blocks": self.depth, "seq_len": self.seq_len,
                "class_position": "first", "class_table": "context_embed (row = class id - class_offset)",
                "head": "tied", "blank_class": "null", "upstream": UPSTREAM}

    def fresh(self) -> UViT:
        """An untrained network of this architecture, initialised as upstream trains it (global RNG)."""
        return UViT(self.config)

    def token_embeddings(self) -> torch.Tensor:
        """Input embeddings (K, d) of the K image codes: raw rows of ``token_emb.word_embeddings``
        (before its LayerNorm), KA-MIG's graph node features."""
        return self.token_emb.word_embeddings.weight[: self.layout.codebook_size]

    def value_projection(self, index: int) -> tuple[torch.Tensor, None]:
        """Block ``index``'s (call order) W_v (d, d), a slice of its ``attn.qkv.weight``; no bias."""
        return self.blocks()[index].attn.value_projection()

    def forward(self, ids: torch.Tensor, labels: torch.Tensor, hooks: HookSet | None = None,
                branch: str = "main") -> Prediction:
        n = self.seq_len
        hooks, ctx = forward_context(self, ids, labels, hooks, branch, slice(1, n + 1))
        rows = self.layout.class_ids(labels)[:, None] - self.layout.class_offset
        sums = hooks("embed", torch.cat([self.context_embed.sums(rows), self.token_emb.sums(ids)], dim=1), ctx)
        x = torch.cat([self.context_embed(sums[:, :1]), self.token_emb(sums[:, 1:])], dim=1)
        x = last_block = run_blocks(self.in_blocks, self.mid_block, self.out_blocks, x, hooks, ctx)
        x = hooks("final_hidden", self.norm(x), ctx)
        logits = hooks("logits", run_head(hooks.head(self.head), x[:, ctx.token_slice]), ctx)
        return Prediction(logits=logits, last_block=last_block)
