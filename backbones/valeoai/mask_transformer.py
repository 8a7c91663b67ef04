"""valeoai's MaskGIT transformer (Maskgit-pytorch v1.0) with upstream's state-dict names and our forward.

Upstream: valeoai/Maskgit-pytorch branch ``v1.0``, commit 674ef1d, ``Network/transformer.py``
``MaskTransformer``, built by ``Trainer/vit.py`` as 768 wide, 24 blocks, 16 heads, MLP 3072,
dropout 0.1 (174,160,874 parameters at 256 px). The names and shapes of :meth:`state_dict` are
upstream's exactly, so its ``model_state_dict`` loads strictly; the forward is ours, with hook sites.

Vocabulary V = K + C + 2 (2026 for K = 1,024 codes and C = 1,000 classes): codes ``0..K-1``, the
mask ``K``, class c at ``K + 1 + c``, and the drop class ``K + 1 + C``, which upstream feeds for a
dropped label (``cls_token[drop_label] = codebook_size + 1 + nclass``): NULL_LABEL maps to it.
BLANK_LABEL puts the mask id ``K`` in the class slot (upstream's ``y = -1``).

Forward, ids (B, N) and labels (B,) -> Prediction(logits (B, N, K), last_block (B, L, d)), L = N + 1,
the class token **last** (position N)::

    x = tok_emb([ids, class_id]) + pos_emb                 (B, L, d)   site embed
    x = first_layer(x)        LN(eps 1e-12) Drop Linear GELU LN(1e-12) Drop Linear  (keys .0 .2 .4 .6)
    block i (pre-norm, LN eps 1e-5):                                    site block_in.i
        u = LN(x); v = u W_v^T + b_v                                    site attn_value.i
        x = x + out_proj(softmax(q k^T / sqrt(d / heads)) v)            (nn.MultiheadAttention's map)
        x = x + net(LN(x))    Linear GELU Drop Linear Drop              site block_out.i
    final_hidden = x                                                    site final_hidden
    logits = head(x[:, :N])                                             site logits

The head (:class:`TiedHead`) is upstream's ``last_layer`` (LN(1e-12) Drop Linear GELU LN(1e-12))
then ``h @ tok_emb.weight^T + bias`` with a per-position bias (N + 1, V); upstream scores every
position and id and keeps ``[:, :N, :K + 1]``, so image row n uses ``bias[n]``. We return the K
code columns only (upstream's sampler softmaxes those K + 1 columns, the mask's included).
GELU is the exact erf form. Dropout acts only in training (eval: none), as upstream's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from migbench.backbones.common.attention import multi_head_attention
from torch import nn

from migbench.api import HookContext, HookSet, Prediction, VocabLayout, forward_context
from migbench.precision import run_head

UPSTREAM = "valeoai/Maskgit-pytorch v1.0 674ef1d934963b7550ad9068015e705a525ceecb"
EDGE_EPS = 1e-12  # eps of the LayerNorms of first_layer and last_layer (the blocks' keep 1e-5)


@dataclass(frozen=True)
class MaskTransformerConfig:
    """Architecture; defaults are the released 256 px model (``img_size=512`` is the 512 px one).

    N = (img_size // downsample)^2 image tokens (upstream's ``f_factor`` is img_size // 16, the
    tokens per side); ``heads`` must divide ``hidden_dim``."""

    img_size: int = 256
    hidden_dim: int = 768
    depth: int = 24
    heads: int = 16
    mlp_dim: int = 3072
    codebook_size: int = 1024
    num_classes: int = 1000
    dropout: float = 0.1
    downsample: int = 16

    def __post_init__(self) -> None:
        sizes = {"img_size": self.img_size, "hidden_dim": self.hidden_dim, "depth": self.depth, "heads": self.heads,
                 "mlp_dim": self.mlp_dim, "codebook_size": self.codebook_size, "num_classes": self.num_classes,
                 "downsample": self.downsample}
        bad = [f"{name}={value}" for name, value in sizes.items() if value < 1]
        if bad:
            raise ValueError(f"MaskTransformerConfig sizes must be positive: {', '.join(bad)}")
        if self.img_size % self.downsample or self.hidden_dim % self.heads:
            raise ValueError(f"MaskTransformerConfig: downsample {self.downsample} must divide img_size "
                             f"{self.img_size} and heads {self.heads} must divide hidden_dim {self.hidden_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MaskTransformerConfig: dropout must lie in [0, 1), got {self.dropout}")

    @classmethod
    def tiny(cls) -> MaskTransformerConfig:
        """64 px -> 4 x 4 = 16 tokens, K = 16 codes, 10 classes, width 32, 2 blocks of 2 heads, MLP 64
        (the configuration of the golden fixture)."""
        return cls(img_size=64, hidden_dim=32, depth=2, heads=2, mlp_dim=64, codebook_size=16, num_classes=10)

    @property
    def side(self) -> int:
        """Tokens per side (upstream's ``f_factor`` / ``patch_size``)."""
        return self.img_size // self.downsample

    @property
    def num_tokens(self) -> int:
        """N, the image tokens."""
        return self.side ** 2

    def layout(self) -> VocabLayout:
        """Codes 0..K-1, [MASK] = K, classes K+1..K+C, the drop class K+1+C; the class token last."""
        k, c = self.codebook_size, self.num_classes
        return VocabLayout(codebook_size=k, mask_id=k, num_classes=c, class_offset=k + 1,
                           null_class_id=k + 1 + c, vocab_size=k + 2 + c, class_position="last")


class MultiheadSelfAttention(nn.Module):
    """``nn.MultiheadAttention``'s parameters and map, our forward: (B, L, d) -> (B, L, d).

    ``in_proj_weight`` (3d, d) stacks [W_q; W_k; W_v] and ``in_proj_bias`` (3d,) likewise;
    attention is softmax(q k^T / sqrt(d / heads)) v per head, then ``out_proj``. The value
    projection passes through site ``attn_value.{index}``. Initialised as torch initialises
    ``nn.MultiheadAttention`` (Xavier-uniform in-projection, zero biases)."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.in_proj_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(3 * width, width)))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.zeros_(self.out_proj.bias)

    def value_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_v (d, d) and b_v (d,): live views of the stacked in-projection."""
        width = self.out_proj.in_features
        return self.in_proj_weight[2 * width:], self.in_proj_bias[2 * width:]

    def forward(self, u: torch.Tensor, hooks: HookSet, ctx: HookContext, index: int) -> torch.Tensor:
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        value = hooks(f"attn_value.{index}", F.linear(u, w_v, b_v), ctx)
        return self.out_proj(multi_head_attention(F.linear(u, w_q, b_q), F.linear(u, w_k, b_k), value, self.heads,
                                                  self.dropout if self.training else 0.0))


class AttentionBranch(nn.Module):
    """Upstream's ``PreNorm(dim, Attention)``: ``norm`` (eps 1e-5) then ``fn.mha``; returns the
    attention output (B, L, d) that the block adds to its input."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fn = nn.ModuleDict({"mha": MultiheadSelfAttention(width, heads, dropout)})

    def forward(self, x: torch.Tensor, hooks: HookSet, ctx: HookContext, index: int) -> torch.Tensor:
        return self.fn["mha"](self.norm(x), hooks, ctx, index)


class FeedForwardBranch(nn.Module):
    """Upstream's ``PreNorm(dim, FeedForward)``: ``norm`` (eps 1e-5) then ``fn.net`` = Linear GELU
    Dropout Linear Dropout (keys ``net.0``, ``net.3``): (B, L, d) -> (B, L, d)."""

    def __init__(self, width: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fn = nn.ModuleDict({"net": nn.Sequential(nn.Linear(width, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                                      nn.Linear(mlp_dim, width), nn.Dropout(dropout))})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn["net"](self.norm(x))


class Block(nn.ModuleList):
    """Upstream's ``transformer.layers.{i}``: [attention branch, feed-forward branch], pre-norm:
    x + Attn(LN(x)), then x + MLP(LN(x)). (B, L, d) -> (B, L, d)."""

    def __init__(self, width: int, heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__([AttentionBranch(width, heads, dropout), FeedForwardBranch(width, mlp_dim, dropout)])

    def forward(self, x: torch.Tensor, hooks: HookSet, ctx: HookContext, index: int) -> torch.Tensor:
        attention, feed_forward = self
        x = x + attention(x, hooks, ctx, index)
        return x + feed_forward(x)


def first_layer(width: int, dropout: float) -> nn.Sequential:
    """LN(1e-12) Dropout Linear GELU LN(1e-12) Dropout Linear, applied after site ``embed``."""
    return nn.Sequential(nn.LayerNorm(width, eps=EDGE_EPS), nn.Dropout(dropout), nn.Linear(width, width), nn.GELU(),
                         nn.LayerNorm(width, eps=EDGE_EPS), nn.Dropout(dropout), nn.Linear(width, width))


def last_layer(width: int, dropout: float) -> nn.Sequential:
    """LN(1e-12) Dropout Linear GELU LN(1e-12), the first half of the head."""
    return nn.Sequential(nn.LayerNorm(width, eps=EDGE_EPS), nn.Dropout(dropout), nn.Linear(width, width), nn.GELU(),
                         nn.LayerNorm(width, eps=EDGE_EPS))


class TiedHead(nn.Module):
    """hidden (B, n, d) -> logits (B, n, K) = last_layer(h) @ tok_emb.weight[:K]^T + bias[:n, :K].

    Upstream scores all V ids and slices; the K code columns computed alone are the same sums.
    It holds the backbone's own ``last_layer``, ``tok_emb`` and ``bias`` (shared, not copied), so
    ``copy.deepcopy`` of it copies all three, as KA-MIG's upstream copies its whole ``mlm_layer``."""

    def __init__(self, last: nn.Sequential, tok_emb: nn.Embedding, bias: nn.Parameter, codebook_size: int) -> None:
        super().__init__()
        self.last_layer, self.tok_emb, self.bias = last, tok_emb, bias
        self.codebook_size = codebook_size

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        k = self.codebook_size
        return self.last_layer(hidden) @ self.tok_emb.weight[:k].t() + self.bias[: hidden.shape[1], :k]


class MaskTransformer(nn.Module):
    """``forward(ids (B, N), labels (B,)) -> Prediction(logits (B, N, K), last_block (B, N + 1, d))``.

    Attributes under upstream's names: ``pos_emb`` (1, N + 1, d), ``bias`` (N + 1, V), ``tok_emb``
    (V, d), ``first_layer``, ``transformer.layers``, ``last_layer``. ``head`` is a :class:`TiedHead`
    over ``last_layer``, ``tok_emb`` and ``bias``, kept out of the state dict (its tensors are there
    under upstream's names); a module assigned to ``head`` (Token-Critic's 1-logit head) is a
    registered submodule and replaces it. Initialised as upstream trains it (torch defaults,
    ``pos_emb`` ~ N(0, 0.02), zero ``bias``)."""

    def __init__(self, config: MaskTransformerConfig = MaskTransformerConfig()) -> None:
        super().__init__()
        self.config = config
        self.layout = config.layout()
        self.depth, self.width = config.depth, config.hidden_dim
        n, d, p = config.num_tokens, config.hidden_dim, config.dropout
        self.pos_emb = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, n + 1, d), 0.0, 0.02))
        self.bias = nn.Parameter(torch.zeros(n + 1, self.layout.vocab_size))
        self.tok_emb = nn.Embedding(self.layout.vocab_size, d)
        self.first_layer = first_layer(d, p)
        self.transformer = nn.ModuleDict({"layers": nn.ModuleList(
            Block(d, config.heads, config.mlp_dim, p) for _ in range(config.depth))})
        self.last_layer = last_layer(d, p)

    @property
    def head(self) -> nn.Module:
        """The head applied to the image rows: an assigned ``head`` module if any, else the tied
        head, rebuilt whenever a parameter it holds was replaced (``to_empty``, ``load_state_dict(assign=True)``)."""
        assigned = self._modules.get("head")
        if assigned is not None:
            return assigned
        tied = self.__dict__.get("_tied_head")
        if tied is None or tied.bias is not self.bias or tied.tok_emb is not self.tok_emb \
                or tied.last_layer is not self.last_layer:
            tied = TiedHead(self.last_layer, self.tok_emb, self.bias, self.layout.codebook_size)
            self.__dict__["_tied_head"] = tied  # a plain attribute: no second copy of its keys in state_dict()
        return tied

    @property
    def seq_len(self) -> int:
        return self.config.num_tokens

    def describe(self) -> dict[str, object]:
        return {"kind": "valeoai_mask_transformer", **asdict(self.config), "seq_len": self.seq_len,
                "class_position": "last", "head": "tied", "blank_class": "mask", "upstream": UPSTREAM}

    def fresh(self) -> MaskTransformer:
        """An untrained network of this architecture, initialised as upstream trains it (global RNG)."""
        return MaskTransformer(self.config)

    def token_embeddings(self) -> torch.Tensor:
        """Input embeddings (K, d) of the K image codes (rows of the tied table)."""
        return self.tok_emb.weight[: self.layout.codebook_size]

    def value_projection(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Block ``index``'s W_v (d, d) and b_v (d,), slices of its ``in_proj_weight``/``in_proj_bias``."""
        return self.transformer["layers"][index][0].fn["mha"].value_projection()

    def forward(self, ids: torch.Tensor, labels: torch.Tensor, hooks: HookSet | None = None,
                branch: str = "main") -> Prediction:
        n = self.seq_len
        hooks, ctx = forward_context(self, ids, labels, hooks, branch, slice(0, n))
        seq = torch.cat([ids, self.layout.class_ids(labels)[:, None]], dim=1)
        x = self.first_layer(hooks("embed", self.tok_emb(seq) + self.pos_emb, ctx))
        for i, block in enumerate(self.transformer["layers"]):
            x = hooks(f"block_in.{i}", x, ctx)
            x = hooks(f"block_out.{i}", block(x, hooks, ctx, i), ctx)
        last_block = x
        x = hooks("final_hidden", x, ctx)
        logits = hooks("logits", run_head(hooks.head(self.head), x[:, ctx.token_slice]), ctx)
        return Prediction(logits=logits, last_block=last_block)
