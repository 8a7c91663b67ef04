"""Google's MaskGIT transformer in UnlockMGM's open-muse layout against the pinned upstream, without the real weights.

Fixtures, made once by a script run outside the repository against JiwanHur/UnlockMGM commit
33e139a5aeae8a061d1d7eb7f85b370e293910a9 (``muse/modeling_transformer.py``, the package loaded
under the name ``muse`` without running its ``__init__.py``, which imports the pipelines), in a
throwaway environment (torch 2.14.1, no xformers, so upstream's baddbmm-softmax attention runs); no
upstream code is committed:

- ``backbones/openmuse/keys/maskgit_transformer.json`` and ``maskgit_transformer_512.json`` (the
  listings ``migbench import`` checks files against): the ``state_dict()`` names and shapes, in
  order, and the parameter count of ``MaskGitTransformer(vocab_size=2025,
  max_position_embeddings=257 | 1025, hidden_size=768, num_hidden_layers=24,
  num_attention_heads=16, intermediate_size=3072, codebook_size=1024, num_vq_tokens=256 | 1024,
  num_classes=1000, layer_norm_eps=1e-12, layer_norm_embeddings=True, use_normformer=False,
  use_encoder_layernorm=False, use_mlm_layer=True, use_mlm_layernorm=True, use_maskgit_mlp=True,
  use_bias=True, hidden_dropout=0.1, attention_dropout=0.1)`` (``configs/ft_{256,512}_toast_cls_b256_corr.yaml``
  ``model.transformer``, the model ``scripts/convert_maskgit_transformer.py`` fills) on ``meta``.
- ``fixtures/openmuse_maskgit_transformer_tiny.safetensors``: ``torch.manual_seed(19)``, then the
  same class with ``vocab_size=27, max_position_embeddings=17, num_vq_tokens=16, hidden_size=32,
  num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, codebook_size=16,
  num_classes=10`` and the other arguments as above (= ``MaskGitTransformerConfig.tiny()``);
  every LayerNorm gain redrawn as 1 + 0.2 N(0, 1) and every other parameter, biases and tables
  included, as 0.3 N(0, 1) in ``named_parameters()`` order; then ``mlm_layer.to_logits.weight``
  set equal to ``embed.word_embeddings.weight`` (as the converter fills it); ``.eval()``.
  Inputs: ``inputs.ids`` (7, 16) drawn with ``Generator().manual_seed(3)`` (codes in [0, 16),
  about 40% set to the mask id 26, rows 5 and 6 all masked, row 3 a copy of row 1);
  ``inputs.labels`` = [0, 3, 9, 5, 7, 2, BLANK_LABEL]; ``inputs.class_slot`` the id upstream got
  in front (label + 16, the mask id 26 for row 6: every id blanked, as UnlockMGM's
  ``use_blank_second`` pass). ``outputs.logits`` (7, 16, 16) is upstream's own
  ``model(cat([class_slot, ids]))[:, 1:, :16]`` under ``no_grad``. ``state.*`` the state dict. All fp32.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from migbench.backbones.openmuse.maskgit_transformer import (
    MaskGitTransformer,
    MaskGitTransformerConfig,
)
from safetensors.torch import load_file
from torch import nn

from migbench.api import BLANK_LABEL, NULL_LABEL, HookContext, HookSet, hook_sites
from migbench.checkpoints import load_strict

FIXTURES = Path(__file__).parent / "fixtures"
KEYS = Path(__file__).parents[1] / "backbones" / "openmuse" / "keys"
GOLDEN = load_file(str(FIXTURES / "openmuse_maskgit_transformer_tiny.safetensors"))
STATE = {k.removeprefix("state."): v for k, v in GOLDEN.items() if k.startswith("state.")}
TINY = MaskGitTransformerConfig.tiny()
K, C = TINY.codebook_size, TINY.num_classes
MASK = K + C


def golden_model() -> MaskGitTransformer:
    model = MaskGitTransformer(TINY).eval()
    load_strict(model, STATE, "openmuse_maskgit_transformer_tiny")
    return model


def random_model(seed: int = 0) -> MaskGitTransformer:
    """Tiny, every parameter random (biases too), eval."""
    torch.manual_seed(seed)
    model = MaskGitTransformer(TINY).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model


def inputs(model: MaskGitTransformer) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, K, (3, model.seq_len), generator=torch.Generator().manual_seed(0))
    ids[:, ::3] = model.layout.mask_id
    return ids, torch.tensor([0, NULL_LABEL, 9])


@torch.no_grad()
def logits(model: MaskGitTransformer, ids: torch.Tensor, labels: torch.Tensor,
           hooks: HookSet | None = None) -> torch.Tensor:
    return model(ids, labels, hooks).logits


# --- 1. key listings ------------------------------------------------------------------------------

@pytest.mark.parametrize(("img_size", "listing", "parameters"), [
    (256, "maskgit_transformer.json", 174_012_393), (512, "maskgit_transformer_512.json", 174_602_217)])
def test_state_dict_is_upstreams_at_full_size(img_size: int, listing: str, parameters: int) -> None:
    """Names (in order), shapes and parameter count of upstream's 394-key model at 256 and 512 px."""
    expected = json.loads((KEYS / listing).read_text())
    with torch.device("meta"):
        model = MaskGitTransformer(MaskGitTransformerConfig(img_size=img_size))
    state = model.state_dict()
    assert list(state) == list(expected["keys"])
    assert {k: list(v.shape) for k, v in state.items()} == expected["keys"]
    assert sum(p.numel() for p in model.parameters()) == expected["parameters"] == parameters
    assert len(state) == 394 and "33e139a5aeae8a061d1d7eb7f85b370e293910a9" in expected["provenance"]
    assert state["embed.position_embeddings.weight"].shape == (img_size ** 2 // 256 + 1, 768)


# --- 2. golden outputs ----------------------------------------------------------------------------

@pytest.mark.parametrize("rows", [[0, 1, 2, 3, 4], [5], [6]], ids=["class", "all-mask", "blank"])
def test_logits_match_upstream(rows: list[int]) -> None:
    """Our logits equal upstream's ``[:, 1:, :K]``: class labels over partly masked ids, an
    all-mask canvas under a class, and the all-mask canvas with the class slot blanked."""
    model = golden_model()
    out = logits(model, GOLDEN["inputs.ids"][rows], GOLDEN["inputs.labels"][rows])
    expected = GOLDEN["outputs.logits"][rows]
    assert out.shape == expected.shape
    assert (out - expected).abs().max() <= 1e-4


def test_the_golden_rows_differ() -> None:
    """Rows 1 and 3 share their ids (classes 3 and 5); rows 5 and 6 are both all-mask (class 2
    vs blanked): the fixture tells the class slot's contents apart."""
    reference = GOLDEN["outputs.logits"]
    assert torch.equal(GOLDEN["inputs.ids"][1], GOLDEN["inputs.ids"][3])
    assert torch.equal(GOLDEN["inputs.ids"][5], GOLDEN["inputs.ids"][6])
    assert (GOLDEN["inputs.ids"][5] == MASK).all() and GOLDEN["inputs.class_slot"][6] == MASK
    assert min((reference[1] - reference[3]).abs().max(), (reference[5] - reference[6]).abs().max()) > 0.1


def test_null_label_is_the_blank_pass_too() -> None:
    """No null class upstream: NULL_LABEL shows [MASK] in the class slot, as BLANK_LABEL does."""
    model = golden_model()
    out = logits(model, GOLDEN["inputs.ids"][[6]], torch.tensor([NULL_LABEL]))
    assert (out - GOLDEN["outputs.logits"][[6]]).abs().max() <= 1e-4


@pytest.mark.parametrize("build", ["to_empty", "assign"])
def test_a_model_built_on_meta_loads(build: str) -> None:
    """Built on ``meta`` then materialised (``to_empty`` + load, or ``load_state_dict(assign=True)``)."""
    with torch.device("meta"):
        model = MaskGitTransformer(TINY)
    if build == "to_empty":
        model.to_empty(device="cpu")
        load_strict(model, STATE, "openmuse_maskgit_transformer_tiny")
    else:
        model.load_state_dict(STATE, assign=True)
    out = logits(model.eval(), GOLDEN["inputs.ids"], GOLDEN["inputs.labels"])
    assert (out - GOLDEN["outputs.logits"]).abs().max() <= 1e-4


# --- 3. what is easy to get wrong -----------------------------------------------------------------

def test_vocabulary_at_full_size() -> None:
    """2025 ids: codes 0..1023, class c -> 1024 + c, the mask 2024 (last); NULL_LABEL and
    BLANK_LABEL -> the mask id; 257 positions at 256 px, 1,025 at 512 px."""
    config = MaskGitTransformerConfig()
    layout = config.layout()
    assert (layout.vocab_size, layout.mask_id, layout.class_offset, layout.class_position) == (2025, 2024, 1024, "first")
    assert layout.class_ids(torch.tensor([0, 999, NULL_LABEL, BLANK_LABEL])).tolist() == [1024, 2023, 2024, 2024]
    assert layout.null_class_id == layout.blank_id == layout.mask_id
    assert (config.num_vq_tokens, config.max_position_embeddings) == (256, 257)
    big = MaskGitTransformerConfig(img_size=512)
    assert (big.num_vq_tokens, big.max_position_embeddings) == (1024, 1025)


def test_the_class_token_is_first() -> None:
    """A label changes the embedded sums only at position 0, by the difference of its two word rows."""
    model = random_model()
    ids, _ = inputs(model)
    seen = []
    hooks = HookSet()
    hooks.add("embed", lambda x, ctx: seen.append(x) or x)
    logits(model, ids, torch.tensor([0, 1, 2]), hooks)
    logits(model, ids, torch.tensor([5, NULL_LABEL, 2]), hooks)
    changed = (seen[0] != seen[1]).any(-1)
    assert changed[:, 1:].sum() == 0 and changed[:, 0].tolist() == [True, True, False]
    table = model.embed.word_embeddings.weight
    torch.testing.assert_close(seen[0][1, 0] - seen[1][1, 0], table[K + 1] - table[MASK])


def test_layers_are_post_ln_with_eps_1e_12() -> None:
    """Layer i maps x to ffn.layer_norm(h + layer_output(gelu(intermediate_output(h)))) with
    h = attn_layer_norm(x + out(attention(x))): no LayerNorm before attention, the norms after
    the residuals; the embedding sums go through ``embeddings_ln`` before layer 0."""
    model = random_model()
    ids, labels = inputs(model)
    seen: dict[str, torch.Tensor] = {}
    hooks = HookSet()
    hooks.add("embed", lambda x, ctx: seen.update(sums=x) or x)
    hooks.add("block_in.0", lambda x, ctx: seen.update(x=x) or x)
    hooks.add("block_out.0", lambda x, ctx: seen.update(out=x) or x)
    logits(model, ids, labels, hooks)
    torch.testing.assert_close(seen["x"], model.embed.embeddings_ln(seen["sums"]))
    layer, x = model.transformer_layers[0], seen["x"]
    attn = layer.attention
    b, length, d = x.shape
    split = lambda t: t.reshape(b, length, 2, d // 2).transpose(1, 2)  # noqa: E731
    q, k, v = split(attn.query(x)), split(attn.key(x)), split(attn.value(x))
    weights = torch.softmax(q @ k.transpose(-1, -2) / (d // 2) ** 0.5, dim=-1)
    with torch.no_grad():
        h = layer.attn_layer_norm(x + attn.out((weights @ v).transpose(1, 2).reshape(b, length, d)))
        ffn = layer.ffn
        expected = ffn.layer_norm(h + ffn.layer_output(F.gelu(ffn.intermediate_output(h))))
    torch.testing.assert_close(seen["out"], expected, rtol=1e-5, atol=1e-5)


def test_norm_eps_gelu_biases_and_dropout() -> None:
    """All 2 + 2 * depth + 1 LayerNorms have eps 1e-12 and a bias; every Linear has a bias;
    GELU is exact (F.gelu); dropout 0.1 on embeddings, attention weights and MLP output acts in
    training only."""
    model = MaskGitTransformer(TINY)
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 1 + 2 * model.depth + 1
    assert {m.eps for m in norms} == {1e-12} and all(m.bias is not None for m in norms)
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Linear))
    assert model.embed.dropout.p == model.transformer_layers[0].ffn.dropout.p == 0.1
    assert model.transformer_layers[0].attention.dropout == 0.1
    ids, labels = inputs(model)
    model.eval()
    assert torch.equal(logits(model, ids, labels), logits(model, ids, labels))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(ids, labels).logits, model(ids, labels).logits)


@pytest.mark.parametrize("std", [0.02, 0.3])
def test_initialised_as_upstream(std: float) -> None:
    """Linear and Embedding weights ~ N(0, initializer_range^2), zero biases, LayerNorms 1 and 0;
    ``to_logits.weight`` drawn on its own (the converter, not the module, copies the word table)."""
    torch.manual_seed(0)
    model = MaskGitTransformer(MaskGitTransformerConfig(initializer_range=std, num_hidden_layers=2))
    word, to_logits = model.embed.word_embeddings.weight, model.mlm_layer.to_logits.weight
    for weight in (word, to_logits, model.transformer_layers[1].ffn.intermediate_output.weight):
        assert abs(weight.std().item() / std - 1) < 0.02
    assert not torch.equal(word, to_logits)
    assert all(not m.bias.any() for m in model.modules() if isinstance(m, nn.Linear | nn.LayerNorm))
    assert all(m.weight.eq(1).all() for m in model.modules() if isinstance(m, nn.LayerNorm))


def test_exact_gelu_not_tanh() -> None:
    """Swapping the head's GELU for the tanh approximation changes upstream's logits measurably
    (so the golden test pins the erf form)."""
    model = golden_model()
    ids, labels = GOLDEN["inputs.ids"], GOLDEN["inputs.labels"]
    head = model.mlm_layer
    with torch.no_grad():
        h = head.mlm_ln(F.gelu(head.mlm_dense(model(ids, labels).last_block[:, 1:]), approximate="tanh"))
        tanh = F.linear(h, head.to_logits.weight[:K], head.to_logits.bias[:K])
    assert (tanh - GOLDEN["outputs.logits"]).abs().max() > 1e-4


def test_final_hidden_is_the_last_layer_output_without_a_norm() -> None:
    """``use_encoder_layernorm=False``: site ``final_hidden`` sees ``last_block`` itself."""
    model = random_model()
    ids, labels = inputs(model)
    seen = {}
    hooks = HookSet()
    hooks.add("final_hidden", lambda x, ctx: seen.update(x=x) or x)
    with torch.no_grad():
        pred = model(ids, labels, hooks)
    assert torch.equal(pred.last_block, seen["x"])
    assert not any(name.startswith("encoder_layer_norm") for name in model.state_dict())


def test_every_hook_site_fires_once_with_its_shape() -> None:
    model = random_model()
    calls: Counter[str] = Counter()
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []
    hooks = HookSet()
    for site in hook_sites(model.depth):
        hooks.add(site, lambda x, ctx, site=site: (calls.update([site]), order.append(site),
                                                    shapes.update({site: tuple(x.shape)}), x)[3])
    ids, labels = inputs(model)
    pred = model(ids, labels, hooks)
    hidden = (3, model.seq_len + 1, model.width)
    assert calls == Counter(hook_sites(model.depth)) and order == hook_sites(model.depth)
    assert shapes == {site: (3, model.seq_len, K) if site == "logits" else hidden for site in hook_sites(model.depth)}
    assert pred.last_block.shape == hidden


def test_hooks_see_the_image_rows_after_the_class_slot() -> None:
    """``token_slice`` = 1..N and ``ctx.masked`` marks the masked image tokens (id K + C)."""
    model = random_model()
    ids, labels = inputs(model)
    seen: list[HookContext] = []
    hooks = HookSet()
    hooks.add("logits", lambda x, ctx: seen.append(ctx) or x)
    logits(model, ids, labels, hooks)
    assert seen[0].token_slice == slice(1, model.seq_len + 1) and torch.equal(seen[0].masked, ids == MASK)


def test_value_projection_acts_on_the_raw_layer_input() -> None:
    """``value_projection(i)`` is layer i's ``attention.value`` (live weight and bias), and site
    ``attn_value.i`` sees it applied to what ``block_in.i`` returned (post-LN: no norm between)."""
    model = random_model()
    ids, labels = inputs(model)
    seen: dict[str, torch.Tensor] = {}
    hooks = HookSet()
    for i in range(model.depth):
        hooks.add(f"block_in.{i}", lambda x, ctx, i=i: seen.setdefault(f"in.{i}", x + 0.25))
        hooks.add(f"attn_value.{i}", lambda v, ctx, i=i: seen.setdefault(f"v.{i}", v))
    logits(model, ids, labels, hooks)
    for i in range(model.depth):
        weight, bias = model.value_projection(i)
        value = model.transformer_layers[i].attention.value
        assert weight is value.weight and bias is value.bias
        torch.testing.assert_close(seen[f"v.{i}"], F.linear(seen[f"in.{i}"], weight, bias))


def test_token_embeddings_are_the_raw_code_rows() -> None:
    """K rows of ``embed.word_embeddings`` (not the classes nor the mask), before ``embeddings_ln``."""
    model = random_model()
    table = model.token_embeddings()
    assert table.shape == (K, model.width) and table.data_ptr() == model.embed.word_embeddings.weight.data_ptr()


def test_the_head_is_mlm_layer_untied_and_copyable() -> None:
    """The head is ``mlm_layer`` (mlm_dense, mlm_ln, to_logits); ``to_logits.weight`` is its own
    parameter, not the word table; a deep copy owns copies of all six tensors; a module assigned
    to ``head`` replaces it and is saved as ``head.*``."""
    model = random_model()
    assert model.head is model.mlm_layer
    assert model.mlm_layer.to_logits.weight is not model.embed.word_embeddings.weight
    assert model.mlm_layer.to_logits.weight.shape == (TINY.vocab_size, model.width)
    copied = copy.deepcopy(model.head)
    assert len(list(copied.parameters())) == 6
    assert not {p.data_ptr() for p in copied.parameters()} & {p.data_ptr() for p in model.parameters()}
    model.head = nn.Linear(model.width, 1)
    ids, labels = inputs(model)
    assert logits(model, ids, labels).shape == (3, model.seq_len, 1)
    assert {k for k in model.state_dict() if k.startswith("head.")} == {"head.weight", "head.bias"}


def test_the_head_scores_the_code_columns_only() -> None:
    """``to_logits.bias[c]`` shifts code c's logits at every image row; class and mask columns change nothing."""
    model = random_model()
    ids, labels = inputs(model)
    base = logits(model, ids, labels)
    with torch.no_grad():
        model.mlm_layer.to_logits.bias[K:] += 5.0
    assert torch.equal(logits(model, ids, labels), base)
    with torch.no_grad():
        model.mlm_layer.to_logits.bias[3] += 1.0
    shift = torch.zeros(K)
    shift[3] = 1.0
    torch.testing.assert_close(logits(model, ids, labels), base + shift)


def test_describe_and_config_errors() -> None:
    described = MaskGitTransformer(TINY).describe()
    assert json.loads(json.dumps(described)) == described
    assert (described["class_position"], described["blank_class"], described["seq_len"]) == ("first", "mask", 16)
    with pytest.raises(ValueError, match="num_attention_heads 5 must divide hidden_size 768"):
        MaskGitTransformerConfig(num_attention_heads=5)
    with pytest.raises(ValueError, match="positive: img_size=0"):
        MaskGitTransformerConfig(img_size=0)
    with pytest.raises(ValueError, match="attention_dropout must lie in"):
        MaskGitTransformerConfig(attention_dropout=1.0)
    with pytest.raises(ValueError, match="initializer_range must be positive"):
        MaskGitTransformerConfig(initializer_range=0.0)
    with pytest.raises(ValueError, match="ids must have shape"):
        MaskGitTransformer(TINY)(torch.zeros(2, 17, dtype=torch.long), torch.zeros(2, dtype=torch.long))
