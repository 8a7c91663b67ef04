"""TiTok's BERT generator (1d-tokenizer ``modeling/maskgit.py`` ``ImageBert``, L-32 and B-64) with upstream's
state-dict names and our forward.

Upstream: bytedance/1d-tokenizer commit 942a96f, ``ImageBert`` = a Hugging Face ``BertModel``
(transformers 4.53.3, ``add_pooling_layer=False``) under ``model``, plus an **untied**
``model.lm_head`` Linear(d, K), as ``configs/infer/TiTok/titok_{l32,b64}.yaml`` build it: 768
wide, 24 layers, 16 heads, MLP 3072, K = 4,096 codes, C = 1,000 classes, N = 32 or 64 tokens
(391 keys; 177,202,432 parameters for L-32, 177,227,008 for B-64). transformers >= 4.54 ties
the head to the word table when the upstream class is built; the released files hold an untied
(K, d) head, which this module keeps. Files written by older transformers may carry the buffer
``model.embeddings.position_ids`` (1, N + 1), which is no parameter (here and in 4.53.3 it is not
in the state dict). The names and shapes of :meth:`state_dict` are upstream's exactly; the
forward is ours, with hook sites.

Vocabulary V = K + C + 2 (one ``word_embeddings`` table): codes ``0..K-1``, [MASK] ``K``, class c
``K + 1 + c``, the null class ("class drop label") ``K + 1 + C``; BLANK_LABEL puts [MASK] in the
class slot, a condition the released weights never saw in training.

Forward, ids (B, N) and labels (B,) -> Prediction(logits (B, N, K), last_block (B, L, d)), L = N + 1,
the class token **first** (position 0, ``token_slice`` = 1..N)::

    e = word[[class_id, ids]] + token_type[0] + pos[0..N]      (B, L, d)   site embed
    x = Drop(LN(e))                                             LN eps 1e-12 (BertEmbeddings)
    layer i (HF BertLayer, post-LN):                            site block_in.i
        v = x W_v^T + b_v    (on the raw layer input)           site attn_value.i
        h = LN_a(x + Drop(dense(softmax(q k^T / sqrt(d / heads)) v)))   attention dropout in training
        x = LN_o(h + Drop(dense_o(GELU(dense_i(h)))))           site block_out.i
    final_hidden = x   (BERT has no final LayerNorm: the last layer's output is already normed)
    logits = lm_head(x[:, 1:])                                  site logits

``token_type_embeddings`` has two rows; upstream never passes token types, so row 0 is added at
every position. ``last_block`` and site ``final_hidden`` are both the last layer's output (as in
the other post-LN family, open-muse's MaskGitTransformer). GELU is exact (erf), every LayerNorm
eps 1e-12, every Linear has a bias; dropout 0.1 (hidden and attention probabilities) acts only
in training. HF's sdpa and eager attention agree to 1.9e-6; this module runs SDPA.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from migbench.backbones.common.attention import multi_head_attention
from torch import nn

from migbench.api import HookContext, HookSet, Prediction, VocabLayout, forward_context
from migbench.precision import run_head

UPSTREAM = ("bytedance/1d-tokenizer 942a96fbdd873780179d1b78d5462911528bf8c8 modeling/maskgit.py ImageBert "
            "(transformers 4.53.3 BertModel)")
LN_EPS = 1e-12  # BertConfig(layer_norm_eps=1e-12): every LayerNorm
INIT_STD = 0.02  # BertConfig(initializer_range=0.02)


def titok_layout(codebook_size: int, num_classes: int) -> VocabLayout:
    """Both TiTok generators' vocabulary (one word table): codes 0..K-1, [MASK] = K, classes
    K+1..K+C, the null class K+1+C; the class token first; BLANK_LABEL shows [MASK] in the class slot."""
    k, c = codebook_size, num_classes
    return VocabLayout(codebook_size=k, mask_id=k, num_classes=c, class_offset=k + 1, null_class_id=k + 1 + c,
                       vocab_size=k + c + 2, class_position="first")


@dataclass(frozen=True)
class ImageBertConfig:
    """Architecture in upstream's names (``model.generator.*``; ``num_classes`` is its
    ``condition_num_classes``, ``dropout``/``attn_drop`` BERT's hidden and attention-probability
    dropout); defaults are B-64 (``configs/infer/TiTok/titok_b64.yaml``), :meth:`l32` is L-32.
    ``num_attention_heads`` must divide ``hidden_size``."""

    image_seq_len: int = 64
    hidden_size: int = 768
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 3072
    codebook_size: int = 4096
    num_classes: int = 1000
    dropout: float = 0.1
    attn_drop: float = 0.1
    initializer_range: float = INIT_STD

    def __post_init__(self) -> None:
        sizes = {"image_seq_len": self.image_seq_len, "hidden_size": self.hidden_size,
                 "num_hidden_layers": self.num_hidden_layers, "num_attention_heads": self.num_attention_heads,
                 "intermediate_size": self.intermediate_size, "codebook_size": self.codebook_size,
                 "num_classes": self.num_classes}
        bad = [f"{name}={value}" for name, value in sizes.items() if value < 1]
        if bad:
            raise ValueError(f"ImageBertConfig sizes must be positive: {', '.join(bad)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"ImageBertConfig: num_attention_heads {self.num_attention_heads} must divide "
                             f"hidden_size {self.hidden_size}")
        for name in ("dropout", "attn_drop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ImageBertConfig: {name} must lie in [0, 1), got {getattr(self, name)}")
        if self.initializer_range <= 0:
            raise ValueError(f"ImageBertConfig: initializer_range must be > 0, got {self.initializer_range}")

    @classmethod
    def b64(cls) -> ImageBertConfig:
        """TiTok B-64's generator: 64 tokens (the defaults)."""
        return cls()

    @classmethod
    def l32(cls) -> ImageBertConfig:
        """TiTok L-32's generator: 32 tokens, otherwise B-64's architecture."""
        return cls(image_seq_len=32)

    @classmethod
    def tiny(cls) -> ImageBertConfig:
        """16 tokens, K = 16 codes, 10 classes (V = 28), width 32, 2 layers of 2 heads, MLP 64
        (the configuration of the golden fixture)."""
        return cls(image_seq_len=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   codebook_size=16, num_classes=10)

    @property
    def vocab_size(self) -> int:
        """K codes, [MASK], C classes and the null class."""
        return titok_layout(self.codebook_size, self.num_classes).vocab_size

    @property
    def max_position_embeddings(self) -> int:
        """N + 1 positions: the class token, then the image tokens."""
        return self.image_seq_len + 1

    def layout(self) -> VocabLayout:
        return titok_layout(self.codebook_size, self.num_classes)


class BertEmbeddings(nn.Module):
    """HF ``BertEmbeddings`` parameters: ``word_embeddings`` (V, d), ``position_embeddings``
    (N + 1, d), ``token_type_embeddings`` (2, d), ``LayerNorm`` (eps 1e-12), dropout; split so
    site ``embed`` sits between :meth:`sums` (ids (B, L) -> word + type[0] + pos (B, L, d)) and
    ``forward`` (-> Drop(LN(sums)))."""

    def __init__(self, vocab_size: int, width: int, positions: int, dropout: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, width)
        self.position_embeddings = nn.Embedding(positions, width)
        self.token_type_embeddings = nn.Embedding(2, width)
        self.LayerNorm = nn.LayerNorm(width, eps=LN_EPS)
        self.dropout = nn.Dropout(dropout)

    def sums(self, ids: torch.Tensor) -> torch.Tensor:
        words = self.word_embeddings(ids) + self.token_type_embeddings.weight[0]
        return words + self.position_embeddings.weight[: ids.shape[1]]

    def forward(self, sums: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.LayerNorm(sums))


class BertSelfAttention(nn.Module):
    """HF ``BertSelfAttention`` (``attention.self``): ``query``, ``key``, ``value`` Linears with
    bias; x (B, L, d) -> softmax(q k^T / sqrt(d / heads)) v (B, L, d), heads concatenated, dropout
    on the attention probabilities in training. The value projection passes through site
    ``attn_value.{index}``."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, hooks: HookSet, ctx: HookContext, index: int) -> torch.Tensor:
        value = hooks(f"attn_value.{index}", self.value(x), ctx)
        return multi_head_attention(self.query(x), self.key(x), value, self.heads,
                                    self.dropout if self.training else 0.0)


class BertResidualOutput(nn.Module):
    """HF ``BertSelfOutput`` / ``BertOutput``: ``dense``, dropout, ``LayerNorm`` (eps 1e-12) after
    the residual: (h (B, L, n), x (B, L, d)) -> LN(Drop(dense(h)) + x)."""

    def __init__(self, width_in: int, width: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, width)
        self.LayerNorm = nn.LayerNorm(width, eps=LN_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertAttention(nn.Module):
    """HF ``BertAttention``: ``self`` (:class:`BertSelfAttention`) then ``output``
    (:class:`BertResidualOutput`): x -> LN(x + Drop(dense(Attn(x))))."""

    def __init__(self, width: int, heads: int, dropout: float, attn_drop: float) -> None:
        super().__init__()
        self.self = BertSelfAttention(width, heads, attn_drop)
        self.output = BertResidualOutput(width, width, dropout)

    def forward(self, x: torch.Tensor, hooks: HookSet, ctx: HookContext, index: int) -> torch.Tensor:
        return self.output(self.self(x, hooks, ctx, index), x)


class BertIntermediate(nn.Module):
    """HF ``BertIntermediate``: h (B, L, d) -> GELU(dense(h)) (B, L, n), GELU exact (erf)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, hidden)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(h))


class BertLayer(nn.Module):
    """HF ``BertLayer``, post-LN: h = ``attention``(x), then ``output``(``intermediate``(h), h).
    (B, L, d) -> (B, L, d)."""

    def __init__(self, width: int, heads: int, hidden: int, dropout: float, attn_drop: float) -> None:
        super().__init__()
        self.attention = BertAttention(width, heads, dropout, attn_drop)
        self.intermediate = BertIntermediate(width, hidden)
        self.output = BertResidualOutput(hidden, width, dropout)

    def forward(self, x: torch.Tensor, hooks: HookSet, ctx: HookContext, index: int) -> torch.Tensor:
        h = self.attention(x, hooks, ctx, index)
        return self.output(self.intermediate(h), h)


class BertEncoder(nn.Module):
    """HF ``BertEncoder``'s parameters: ``layer`` (a ModuleList of :class:`BertLayer`); the
    layers are called one by one by :class:`ImageBert`."""

    def __init__(self, config: ImageBertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            BertLayer(config.hidden_size, config.num_attention_heads, config.intermediate_size, config.dropout,
                      config.attn_drop) for _ in range(config.num_hidden_layers))


class BertWithHead(nn.Module):
    """Upstream's ``model``: the ``BertModel`` parameters (``embeddings``, ``encoder``; no pooler)
    and the ``lm_head`` Linear(d, K) it attaches, in upstream's registration order."""

    def __init__(self, config: ImageBertConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.embeddings = BertEmbeddings(config.vocab_size, d, config.max_position_embeddings, config.dropout)
        self.encoder = BertEncoder(config)
        self.lm_head = nn.Linear(d, config.codebook_size)


class ImageBert(nn.Module):
    """``forward(ids (B, N), labels (B,)) -> Prediction(logits (B, N, K), last_block (B, N + 1, d))``.

    Attributes under upstream's names: ``model.embeddings``, ``model.encoder.layer`` (``depth`` =
    ``num_hidden_layers`` hooked blocks), ``model.lm_head``. ``head`` is ``model.lm_head`` unless
    a module was assigned to ``head`` (Token-Critic's 1-logit head), which then is a registered
    submodule and replaces it. Initialised as HF BERT's ``_init_weights`` (Linear and Embedding
    weights N(0, initializer_range^2), zero biases, LayerNorms 1 and 0; the head too, as upstream's
    ``post_init`` reaches it)."""

    def __init__(self, config: ImageBertConfig = ImageBertConfig()) -> None:
        super().__init__()
        self.config = config
        self.layout = config.layout()
        self.depth, self.width = config.num_hidden_layers, config.hidden_size
        self.model = BertWithHead(config)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=config.initializer_range)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    @property
    def head(self) -> nn.Module:
        """The head applied to the image rows: an assigned ``head`` module if any, else ``model.lm_head``."""
        assigned = self._modules.get("head")
        return assigned if assigned is not None else self.model.lm_head

    @property
    def seq_len(self) -> int:
        return self.config.image_seq_len

    def describe(self) -> dict[str, object]:
        return {"kind": "titok_image_bert", **asdict(self.config), "seq_len": self.seq_len, "class_position": "first",
                "norm": "post-LN, eps 1e-12", "head": "model.lm_head (untied)", "null_class": "own id K+1+C",
                "blank_class": "mask", "upstream": UPSTREAM}

    def fresh(self) -> ImageBert:
        """An untrained network of this architecture, initialised as upstream's (global RNG)."""
        return ImageBert(self.config)

    def token_embeddings(self) -> torch.Tensor:
        """Input embeddings (K, d) of the K image codes: raw rows of ``model.embeddings.word_embeddings``
        (before the token-type and position rows and the LayerNorm)."""
        return self.model.embeddings.word_embeddings.weight[: self.layout.codebook_size]

    def value_projection(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``index``'s ``attention.self.value`` weight (d, d) and bias (d,), acting on the
        layer's input (post-LN: the previous layer's normed output, or the normed embeddings)."""
        value = self.model.encoder.layer[index].attention.self.value
        return value.weight, value.bias

    def forward(self, ids: torch.Tensor, labels: torch.Tensor, hooks: HookSet | None = None,
                branch: str = "main") -> Prediction:
        n = self.seq_len
        hooks, ctx = forward_context(self, ids, labels, hooks, branch, slice(1, n + 1))
        embeddings = self.model.embeddings
        seq = torch.cat([self.layout.class_ids(labels)[:, None], ids], dim=1)
        x = embeddings(hooks("embed", embeddings.sums(seq), ctx))
        for i, layer in enumerate(self.model.encoder.layer):
            x = hooks(f"block_in.{i}", x, ctx)
            x = hooks(f"block_out.{i}", layer(x, hooks, ctx, i), ctx)
        last_block = x
        x = hooks("final_hidden", x, ctx)
        logits = hooks("logits", run_head(hooks.head(self.head), x[:, ctx.token_slice]), ctx)
        return Prediction(logits=logits, last_block=last_block)
