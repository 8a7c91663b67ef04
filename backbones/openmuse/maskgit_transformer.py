"""Google's MaskGIT transformer in UnlockMGM's open-muse layout, with upstream's state-dict names and our forward.

Upstream: JiwanHur/UnlockMGM commit 33e139a, ``muse/modeling_transformer.py`` ``MaskGitTransformer``
with ``use_maskgit_mlp=True`` as ``configs/ft_{256,512}_toast_cls_b256_corr.yaml`` (and
``scripts/convert_maskgit_transformer.py``, which fills it from Google's JAX checkpoints) build it:
768 wide, 24 layers, 16 heads, MLP 3072, LayerNorm eps 1e-12 with bias everywhere, biases on every
Linear, no normformer, no final encoder LayerNorm, dropout 0.1 (394 keys; 174,012,393 parameters
at 256 px, 174,602,217 at 512 px). open-muse's own main-branch ``MaskGitTransformer`` (pre-LN, GLU)
is a different network that cannot hold these weights. The names and shapes of :meth:`state_dict`
are upstream's exactly, so the converted ``maskgit_imagenet{256,512}_torch`` and UnlockMGM's
fine-tuned backbone load strictly; the forward is ours, with hook sites.

Vocabulary V = K + C + 1 (2025): codes ``0..K-1``, class c at ``K + c``, the mask ``K + C`` (the
last id). Upstream has **no null class** and no class-conditional CFG (its ``guidance_scale``
acts only on text encoder states; Google's MaskGIT was trained without label dropout). Both
NULL_LABEL and BLANK_LABEL therefore put the mask id in the class slot: BLANK_LABEL is exactly
UnlockMGM's ``use_blank_second`` auxiliary pass (every id, the class slot included, set to the
mask id); NULL_LABEL is "CFG with mask", a condition the released weights never saw in training.

Forward, ids (B, N) and labels (B,) -> Prediction(logits (B, N, K), last_block (B, L, d)), L = N + 1,
the class token **first** (position 0, ``token_slice`` = 1..N)::

    e = word[[class_id, ids]] + pos[0..N]                           (B, L, d)   site embed
    x = Drop(embeddings_ln(e))                                      LN eps 1e-12
    layer i (post-LN, as Google's BERT-style MaskGIT):              site block_in.i
        v = x W_v^T + b_v    (on the raw layer input: no LN before attention)   site attn_value.i
        h = attn_layer_norm(x + out(Drop_attn(softmax(q k^T / sqrt(d / heads))) v))
        x = ffn.layer_norm(h + Drop(layer_output(GELU(intermediate_output(h)))))  site block_out.i
    final_hidden = x      (no final LayerNorm: ``use_encoder_layernorm=False``)   site final_hidden
    logits = mlm_layer(x[:, 1:])                                    site logits

The head is upstream's ``mlm_layer`` (:class:`MlmLayer`): ``to_logits(mlm_ln(GELU(mlm_dense(h))))``.
``to_logits`` is an ordinary Linear over all V ids (weight (V, d), bias (V,)), **not tied** in the
module: Google's head multiplies by the word embeddings, and upstream's converter copies
``embed.word_embeddings.weight`` into ``mlm_layer.to_logits.weight`` once. Upstream scores all L
positions and V ids, and its samplers keep ``[:, 1:, :K]``; we score those K columns of the N
image rows only (the same sums). GELU is the exact erf form (``F.gelu``, as upstream's PyTorch
port, although Google's JAX model used the tanh approximation). Dropout acts only in training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from migbench.backbones.common.attention import multi_head_attention
from torch import nn

from migbench.api import HookContext, HookSet, Prediction, VocabLayout, forward_context
from migbench.precision import run_head

UPSTREAM = "JiwanHur/UnlockMGM 33e139a5aeae8a061d1d7eb7f85b370e293910a9 muse/modeling_transformer.py MaskGitTransformer"
LN_EPS = 1e-12  # every LayerNorm (``layer_norm_eps`` of upstream's configs)


@dataclass(frozen=True)
class MaskGitTransformerConfig:
    """Architecture in upstream's names; defaults are the 256 px model (``img_size=512``: 32 x 32
    tokens, 1,025 positions, the 512 px one).

    N = (img_size // downsample)^2 image tokens (upstream's ``num_vq_tokens``); ``vocab_size``
    = K + C + 1 and ``max_position_embeddings`` = N + 1 follow. ``num_attention_heads`` must
    divide ``hidden_size``. ``initializer_range`` is the std of the truncated-normal init of
    Linear and Embedding weights (upstream's; 0.02 in its configs)."""

    img_size: int = 256
    hidden_size: int = 768
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 3072
    codebook_size: int = 1024
    num_classes: int = 1000
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    downsample: int = 16
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        sizes = {"img_size": self.img_size, "hidden_size": self.hidden_size,
                 "num_hidden_layers": self.num_hidden_layers, "num_attention_heads": self.num_attention_heads,
                 "intermediate_size": self.intermediate_size, "codebook_size": self.codebook_size,
                 "num_classes": self.num_classes, "downsample": self.downsample}
        bad = [f"{name}={value}" for name, value in sizes.items() if value < 1]
        if bad:
            raise ValueError(f"MaskGitTransformerConfig sizes must be positive: {', '.join(bad)}")
        if self.img_size % self.downsample or self.hidden_size % self.num_attention_heads:
            raise ValueError(f"MaskGitTransformerConfig: downsample {self.downsample} must divide img_size "
                             f"{self.img_size} and num_attention_heads {self.num_attention_heads} must divide "
                             f"hidden_size {self.hidden_size}")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"MaskGitTransformerConfig: {name} must lie in [0, 1), got {getattr(self, name)}")
        if self.initializer_range <= 0.0:
            raise ValueError(f"MaskGitTransformerConfig: initializer_range must be positive, got {self.initializer_range}")

    @classmethod
    def tiny(cls) -> MaskGitTransformerConfig:
        """64 px -> 4 x 4 = 16 tokens, K = 16 codes, 10 classes (V = 27), width 32, 2 layers of 2
        heads, MLP 64 (the configuration of the golden fixture)."""
        return cls(img_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   codebook_size=16, num_classes=10)

    @property
    def num_vq_tokens(self) -> int:
        """N, the image tokens."""
        return (self.img_size // self.downsample) ** 2

    @property
    def max_position_embeddings(self) -> int:
        """N + 1 positions: the class token, then the image tokens."""
        return self.num_vq_tokens + 1

    @property
    def vocab_size(self) -> int:
        """K codes, C classes and the mask."""
        return self.codebook_size + self.num_classes + 1

    def layout(self) -> VocabLayout:
        """Codes 0..K-1, classes K..K+C-1, [MASK] = K+C; the class token first. No null class
        upstream: NULL_LABEL and BLANK_LABEL both show [MASK] in the class slot."""
        k, c = self.codebook_size, self.num_classes
        return VocabLayout(codebook_size=k, mask_id=k + c, num_classes=c, class_offset=k, null_class_id=k + c,
                           vocab_size=k + c + 1, class_position="first")


class Embed(nn.Module):
    """Upstream's ``Embed`` with ``layer_norm_embeddings=True``: ``word_embeddings`` (V, d),
    ``position_embeddings`` (N + 1, d), ``embeddings_ln`` (eps 1e-12, with bias), dropout; split
    so site ``embed`` sits between :meth:`sums` (ids (B, L) -> word + pos (B, L, d)) and ``forward``
    (-> Drop(LN(sums)))."""

    def __init__(self, vocab_size: int, width: int, positions: int, dropout: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, width)
        self.position_embeddings = nn.Embedding(positions, width)
        self.embeddings_ln = nn.LayerNorm(width, eps=LN_EPS)
        self.dropout = nn.Dropout(dropout)

    def sums(self, ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(ids) + self.position_embeddings.weight[: ids.shape[1]]

    def forward(self, sums: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.embeddings_ln(sums))


class Attention(nn.Module):
    """Upstream's ``Attention``: separate ``query``, ``key``, ``value``, ``out`` Linears with bias,
    softmax(q k^T / sqrt(d / heads)) v per head, dropout on the attention weights in training.
    (B, L, d) -> (B, L, d); the value projection passes through site ``attn_value.{index}``."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, hooks: HookSet, ctx: HookContext, index: int) -> torch.Tensor:
        value = hooks(f"attn_value.{index}", self.value(x), ctx)
        return self.out(multi_head_attention(self.query(x), self.key(x), value, self.heads,
                                             self.dropout if self.training else 0.0))


class Mlp(nn.Module):
    """Upstream's ``Mlp`` (Google's MaskGIT MLP), residual and post-LN inside:
    h (B, L, d) -> layer_norm(h + Drop(layer_output(GELU(intermediate_output(h))))), eps 1e-12."""

    def __init__(self, width: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.intermediate_output = nn.Linear(width, hidden)
        self.layer_output = nn.Linear(hidden, width)
        self.layer_norm = nn.LayerNorm(width, eps=LN_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(h + self.dropout(self.layer_output(F.gelu(self.intermediate_output(h)))))


class TransformerLayer(nn.Module):
    """Upstream's ``TransformerLayer`` with ``use_maskgit_mlp=True``, ``use_normformer=False``:
    post-LN, h = attn_layer_norm(x + Attn(x)) (the norm after the residual, despite its name),
    then ``ffn(h)``. (B, L, d) -> (B, L, d)."""

    def __init__(self, width: int, heads: int, hidden: int, hidden_dropout: float, attention_dropout: float) -> None:
        super().__init__()
        self.attn_layer_norm = nn.LayerNorm(width, eps=LN_EPS)
        self.attention = Attention(width, heads, attention_dropout)
        self.ffn = Mlp(width, hidden, hidden_dropout)

    def forward(self, x: torch.Tensor, hooks: HookSet, ctx: HookContext, index: int) -> torch.Tensor:
        return self.ffn(self.attn_layer_norm(x + self.attention(x, hooks, ctx, index)))


class MlmLayer(nn.Module):
    """Upstream's ``MlmLayer``: ``mlm_dense`` (d, d), GELU, ``mlm_ln`` (eps 1e-12), ``to_logits``
    (V, d) with bias (V,). ``forward(h (B, n, d)) -> logits (B, n, K)``: the K code columns of
    ``to_logits``, the sums upstream computes before it slices ``[..., :K]``. A ``copy.deepcopy``
    copies all three (KA-MIG's fine-tuned head copy)."""

    def __init__(self, width: int, vocab_size: int, codebook_size: int) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.mlm_dense = nn.Linear(width, width)
        self.mlm_ln = nn.LayerNorm(width, eps=LN_EPS)
        self.to_logits = nn.Linear(width, vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        k = self.codebook_size
        h = self.mlm_ln(F.gelu(self.mlm_dense(hidden)))
        return F.linear(h, self.to_logits.weight[:k], self.to_logits.bias[:k])


class MaskGitTransformer(nn.Module):
    """``forward(ids (B, N), labels (B,)) -> Prediction(logits (B, N, K), last_block (B, N + 1, d))``.

    Attributes under upstream's names: ``embed`` (:class:`Embed`), ``transformer_layers``
    (:class:`TransformerLayer` each), ``mlm_layer`` (:class:`MlmLayer`). ``head`` is ``mlm_layer``
    unless a module was assigned to ``head`` (Token-Critic's 1-logit head), which then is a
    registered submodule and replaces it. Initialised as upstream's ``_init_weights`` (Linear
    and Embedding weights N(0, initializer_range^2) truncated to [-2, 2], zero biases, LayerNorms
    1 and 0)."""

    def __init__(self, config: MaskGitTransformerConfig = MaskGitTransformerConfig()) -> None:
        super().__init__()
        self.config = config
        self.layout = config.layout()
        self.depth, self.width = config.num_hidden_layers, config.hidden_size
        d = config.hidden_size
        self.embed = Embed(config.vocab_size, d, config.max_position_embeddings, config.hidden_dropout)
        self.transformer_layers = nn.ModuleList(
            TransformerLayer(d, config.num_attention_heads, config.intermediate_size, config.hidden_dropout,
                             config.attention_dropout) for _ in range(config.num_hidden_layers))
        self.mlm_layer = MlmLayer(d, config.vocab_size, config.codebook_size)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, std=config.initializer_range)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    @property
    def head(self) -> nn.Module:
        """The head applied to the image rows: an assigned ``head`` module if any, else ``mlm_layer``."""
        assigned = self._modules.get("head")
        return assigned if assigned is not None else self.mlm_layer

    @property
    def seq_len(self) -> int:
        return self.config.num_vq_tokens

    def describe(self) -> dict[str, object]:
        return {"kind": "openmuse_maskgit_transformer", **asdict(self.config), "seq_len": self.seq_len,
                "class_position": "first", "norm": "post-LN, eps 1e-12", "head": "mlm_layer (to_logits untied)",
                "null_class": "mask (no null class upstream)", "blank_class": "mask", "upstream": UPSTREAM}

    def fresh(self) -> MaskGitTransformer:
        """An untrained network of this architecture, initialised as upstream's (global RNG)."""
        return MaskGitTransformer(self.config)

    def token_embeddings(self) -> torch.Tensor:
        """Input embeddings (K, d) of the K image codes: raw rows of ``embed.word_embeddings``
        (before ``embeddings_ln``)."""
        return self.embed.word_embeddings.weight[: self.layout.codebook_size]

    def value_projection(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``index``'s ``attention.value`` weight (d, d) and bias (d,), acting on the layer's
        input (post-LN: the previous layer's normed output, or the normed embeddings)."""
        value = self.transformer_layers[index].attention.value
        return value.weight, value.bias

    def forward(self, ids: torch.Tensor, labels: torch.Tensor, hooks: HookSet | None = None,
                branch: str = "main") -> Prediction:
        n = self.seq_len
        hooks, ctx = forward_context(self, ids, labels, hooks, branch, slice(1, n + 1))
        seq = torch.cat([self.layout.class_ids(labels)[:, None], ids], dim=1)
        x = self.embed(hooks("embed", self.embed.sums(seq), ctx))
        for i, layer in enumerate(self.transformer_layers):
            x = hooks(f"block_in.{i}", x, ctx)
            x = hooks(f"block_out.{i}", layer(x, hooks, ctx, i), ctx)
        last_block = x
        x = hooks("final_hidden", x, ctx)
        logits = hooks("logits", run_head(hooks.head(self.head), x[:, ctx.token_slice]), ctx)
        return Prediction(logits=logits, last_block=last_block)
