"""TiTok's class-conditional generators (ImageBert: L-32, B-64; UViTBert: S-128) against the pinned upstream,
without the real weights.

Fixtures, made once by a script run outside the repository against bytedance/1d-tokenizer commit
942a96fbdd873780179d1b78d5462911528bf8c8 (``modeling/maskgit.py``, loaded by file path with
``modeling/modules/base_model.py`` and ``blocks.py`` unmodified; the ``modeling`` package
``__init__``s, which import the training losses, not run), in a throwaway environment (torch
2.14.1, transformers 4.53.3, which does not tie ``lm_head``); no upstream code is committed:

- ``backbones/titok/keys/generator_{l32,b64,s128}.json`` (the listings ``migbench import`` checks
  files against): the ``state_dict()`` names and shapes, in order, and the parameter count of
  ``ImageBert`` / ``UViTBert`` built from ``configs/infer/TiTok/titok_{l32,b64,s128}.yaml``'s
  ``model`` section (codebook 4096, 1000 classes; hidden 768 / 24 layers / 16 heads / MLP 3072 at
  32 and 64 tokens, hidden 1024 / 20 layers / 16 heads / MLP 4096 at 128 tokens) on ``meta``.
- ``fixtures/titok_image_bert_tiny.safetensors`` and ``titok_uvit_bert_tiny.safetensors``:
  ``torch.manual_seed(20)`` (ImageBert) or ``21`` (UViTBert), then the upstream class with
  ``codebook_size=16``, ``condition_num_classes=10``, ``image_seq_len=16``, ``hidden_size=32``,
  ``num_attention_heads=2``, ``intermediate_size=64``, ``num_hidden_layers=2`` (ImageBert) or
  ``4`` (UViTBert), dropout and attn_drop 0.1 (= ``ImageBertConfig.tiny()`` /
  ``UViTBertConfig.tiny()``); every LayerNorm gain redrawn as 1 + 0.2 N(0, 1) and every other
  parameter, biases, tables and ``pos_embed`` included, as 0.3 N(0, 1) in ``named_parameters()``
  order; ``.eval()``. Inputs: ``inputs.ids`` (7, 16) drawn with ``Generator().manual_seed(3)``
  (codes in [0, 16), about 40% set to the mask id 16, rows 5 and 6 all masked, row 3 a copy of
  row 1), ``inputs.labels`` = [0, 3, 9, 5, 7, 2, 4]. Outputs, upstream's own
  ``forward(ids, condition, cond_drop_prob)`` (its ``[:, 1:]`` rows, K columns) under ``no_grad``:
  ``outputs.cond`` with ``cond_drop_prob=0.0`` (the class given), ``outputs.null`` with 1.0
  (every row the null class K + 1 + C), ``outputs.blank`` with condition -1 and 0.0 (so the class
  slot holds -1 + K + 1 = K, the [MASK] id: our BLANK_LABEL). ``state.*`` the state dict. All fp32.
- ``fixtures/titok_generate_upstream.safetensors``: upstream's ``ImageBert.generate`` (UViTBert
  inherits it) run on the tiny golden weights above with labels [1, 8] after
  ``torch.manual_seed(seed)``, for three presets (safetensors metadata: one JSON string per
  preset with the model, the seed and the ``generate`` arguments):

  ==========  ===================  ====  ======  ==============================================
  preset      weights              seed  steps   settings (all ``softmax_temperature_annealing``)
  ==========  ===================  ====  ======  ==============================================
  ``b64``     titok_image_bert     0     8       randomize_temperature 11.0, guidance 3.0, linear
  ``l32``     titok_image_bert     1     8       randomize_temperature 9.5, guidance 4.5, linear
  ``s128``    titok_uvit_bert      2     64      randomize_temperature 2.8, guidance 6.9,
                                                 power-cosine, guidance_scale_pow 3.0
  ==========  ===================  ====  ======  ==============================================

  The released step counts are kept although the tiny sequence has 16 tokens: at 64 steps the
  reveal schedule reaches ``mask_len`` 1 at step 14, after which each step re-masks the one
  token left, until the last step samples it. Recorded by wrapping (not editing) upstream: the
  model's ``forward`` (which passes ran), ``torch.Tensor.uniform_`` (every draw) and a line
  tracer on ``generate``'s frame (its locals just before the step's ``ids`` update). Per preset
  ``P``, S steps, B = 2 rows, N = 16 tokens, K = 16 codes:

  - ``P.labels`` (B,) int64 and ``P.seed`` () int64;
  - ``P.choice_temperature`` (S,) float64: ``annealed_temp`` = randomize_temperature * (1 - r),
    r = (step + 1) / S, the scale of both Gumbel draws of the step;
  - ``P.cfg_scale`` (S,) float64: the ``cfg_scale`` the step's logits used (linear: 0 at step 0
    and guidance * r of the previous step after it, a Python float; power-cosine: a float32
    tensor (guidance - 1) (1 - cos(pi (step / S)^pow)) / 2 + 1, stored exactly);
  - ``P.passes`` (S,) int64: forwards run in the step (1: conditional only, when
    ``cfg_scale == 0``; 2: conditional and unconditional), sum = NFE (15, 15, 128);
    ``P.uncond`` (S,) bool: whether the unconditional (null-class) pass ran;
  - ``P.softmax_temperature`` (S,) float64: 0.5 + 0.8 (1 - r), dividing the guided logits;
  - ``P.mask_len`` (S,) int64: the tokens re-masked after the step (upstream takes batch row 0's
    value for every row; the last step re-masks none);
  - ``P.token_uniform`` (S, B, N, K) float32: the step's first ``uniform_`` draw, the Gumbel
    noise of the token choice over every position and code; ``P.confidence_uniform`` (S, B, N)
    float32: its second, the Gumbel noise of the confidence (of every position; the unmasked
    ones have confidence +inf). Upstream forms -log(-log(u)) with each log's argument clamped
    at 1e-20. Between them upstream's forward draws ``rand_like`` (B,) per pass (its
    ``cond_drop_prob`` test), so a sampler seeded alike does not see the same stream: replaying
    these tensors in place of upstream's draws under another seed gave the same ids;
  - ``P.ids_per_step`` (S, B, N) int64: ``ids`` after each step ([MASK] = 16 where re-masked);
    ``P.ids`` (B, N) int64: upstream's return value (= the last row of ``ids_per_step``).
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from migbench.backbones.titok.image_bert import ImageBert, ImageBertConfig
from migbench.backbones.titok.uvit_bert import UViTBert, UViTBertConfig
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from migbench.api import BLANK_LABEL, NULL_LABEL, HookContext, HookSet, hook_sites
from migbench.checkpoints import load_strict

FIXTURES = Path(__file__).parent / "fixtures"
KEYS = Path(__file__).parents[1] / "backbones" / "titok" / "keys"
FAMILIES = {"image_bert": (ImageBert, ImageBertConfig.tiny()), "uvit_bert": (UViTBert, UViTBertConfig.tiny())}
GOLDEN = {name: load_file(str(FIXTURES / f"titok_{name}_tiny.safetensors")) for name in FAMILIES}
K, C = 16, 10
MASK = K
Model = ImageBert | UViTBert


def state(name: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix("state."): v for k, v in GOLDEN[name].items() if k.startswith("state.")}


def golden_model(name: str) -> Model:
    cls, config = FAMILIES[name]
    model = cls(config).eval()
    load_strict(model, state(name), f"titok_{name}_tiny")
    return model


def random_model(name: str, seed: int = 0) -> Model:
    """Tiny, every parameter random (biases too), eval."""
    cls, config = FAMILIES[name]
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model


def inputs(model: Model) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, K, (3, model.seq_len), generator=torch.Generator().manual_seed(0))
    ids[:, ::3] = model.layout.mask_id
    return ids, torch.tensor([0, NULL_LABEL, 9])


def word_table(model: Model) -> nn.Embedding:
    """The one input table: ``model.embeddings.word_embeddings`` (ImageBert) or ``embeddings`` (UViTBert)."""
    return model.model.embeddings.word_embeddings if isinstance(model, ImageBert) else model.embeddings


@torch.no_grad()
def logits(model: Model, ids: torch.Tensor, labels: torch.Tensor, hooks: HookSet | None = None) -> torch.Tensor:
    return model(ids, labels, hooks).logits


families = pytest.mark.parametrize("name", list(FAMILIES))


# --- 1. key listings ------------------------------------------------------------------------------

@pytest.mark.parametrize(("variant", "model", "keys", "parameters", "tokens"), [
    ("l32", lambda: ImageBert(ImageBertConfig.l32()), 391, 177_202_432, 32),
    ("b64", lambda: ImageBert(ImageBertConfig.b64()), 391, 177_227_008, 64),
    ("s128", lambda: UViTBert(UViTBertConfig.s128()), 257, 294_990_848, 128)])
def test_state_dict_is_upstreams_at_full_size(variant: str, model, keys: int, parameters: int, tokens: int) -> None:
    """Names (in order), shapes and parameter count of upstream's released generators, on meta."""
    expected = json.loads((KEYS / f"generator_{variant}.json").read_text())
    with torch.device("meta"):
        built = model()
    sd = built.state_dict()
    assert list(sd) == list(expected["keys"])
    assert {k: list(v.shape) for k, v in sd.items()} == expected["keys"]
    assert sum(p.numel() for p in built.parameters()) == expected["parameters"] == parameters
    assert len(sd) == keys and "942a96fbdd873780179d1b78d5462911528bf8c8" in expected["provenance"]
    positions = sd["model.embeddings.position_embeddings.weight"] if variant != "s128" else sd["pos_embed"][0]
    assert positions.shape[0] == tokens + 1 and built.seq_len == tokens


def test_full_size_depths_and_heads() -> None:
    """ImageBert: 24 hooked layers and an untied (K, d) head; UViTBert S-128: 21 blocks in call
    order (in_blocks.0..9, mid_block = index 10, out_blocks.0..9), MLP 4096, head (K, d)."""
    with torch.device("meta"):
        bert, uvit = ImageBert(), UViTBert()
    assert (bert.depth, bert.width, tuple(bert.head.weight.shape)) == (24, 768, (4096, 768))
    assert bert.head.weight is not bert.model.embeddings.word_embeddings.weight
    blocks = uvit.blocks()
    assert uvit.depth == len(blocks) == 21 and blocks[10] is uvit.mid_block
    assert all(b.skip_linear is None for b in blocks[:11]) and all(b.skip_linear is not None for b in blocks[11:])
    assert (uvit.width, uvit.mid_block.mlp.fc1.out_features, tuple(uvit.head.weight.shape)) == (1024, 4096, (4096, 1024))


# --- 2. golden outputs ----------------------------------------------------------------------------

@families
@pytest.mark.parametrize("kind", ["cond", "null", "blank"])
def test_logits_match_upstream(name: str, kind: str) -> None:
    """Our logits equal upstream's ``forward(ids, condition, cond_drop_prob)``: the class given
    (0.0), every row the null class (1.0, our NULL_LABEL) and [MASK] in the class slot (BLANK_LABEL)."""
    model, golden = golden_model(name), GOLDEN[name]
    labels = {"cond": golden["inputs.labels"], "null": torch.full((7,), NULL_LABEL),
              "blank": torch.full((7,), BLANK_LABEL)}[kind]
    out = logits(model, golden["inputs.ids"], labels)
    expected = golden[f"outputs.{kind}"]
    assert out.shape == expected.shape == (7, 16, K)
    assert (out - expected).abs().max() <= 1e-4


@families
def test_the_golden_rows_differ(name: str) -> None:
    """Rows 1 and 3 share their ids (classes 3 and 5); the class, null and blank passes differ."""
    golden = GOLDEN[name]
    cond, null, blank = golden["outputs.cond"], golden["outputs.null"], golden["outputs.blank"]
    assert torch.equal(golden["inputs.ids"][1], golden["inputs.ids"][3]) and (golden["inputs.ids"][5] == MASK).all()
    assert min((cond[1] - cond[3]).abs().max(), (cond - null).abs().max(), (null - blank).abs().max()) > 0.1


@families
@pytest.mark.parametrize("build", ["to_empty", "assign"])
def test_a_model_built_on_meta_loads(name: str, build: str) -> None:
    """Built on ``meta`` then materialised (``to_empty`` + strict load, or ``load_state_dict(assign=True)``)."""
    cls, config = FAMILIES[name]
    with torch.device("meta"):
        model = cls(config)
    if build == "to_empty":
        model.to_empty(device="cpu")
        load_strict(model, state(name), f"titok_{name}_tiny")
    else:
        model.load_state_dict(state(name), assign=True)
    out = logits(model.eval(), GOLDEN[name]["inputs.ids"], GOLDEN[name]["inputs.labels"])
    assert (out - GOLDEN[name]["outputs.cond"]).abs().max() <= 1e-4


# --- 3. what is easy to get wrong -----------------------------------------------------------------

@pytest.mark.parametrize("config", [ImageBertConfig(), UViTBertConfig()], ids=["image_bert", "uvit_bert"])
def test_vocabulary_at_full_size(config: ImageBertConfig | UViTBertConfig) -> None:
    """5098 ids: codes 0..4095, [MASK] 4096, class c -> 4097 + c, the null class 5097;
    BLANK_LABEL -> [MASK]."""
    layout = config.layout()
    assert (layout.vocab_size, layout.mask_id, layout.class_offset, layout.class_position) == (5098, 4096, 4097, "first")
    assert layout.class_ids(torch.tensor([0, 999, NULL_LABEL, BLANK_LABEL])).tolist() == [4097, 5096, 5097, 4096]
    assert config.vocab_size == 5098


@families
def test_the_class_token_is_first(name: str) -> None:
    """A label changes the embedded sums only at position 0, by the difference of its two word rows."""
    model = random_model(name)
    ids, _ = inputs(model)
    seen = []
    hooks = HookSet()
    hooks.add("embed", lambda x, ctx: seen.append(x) or x)
    logits(model, ids, torch.tensor([0, 1, 2]), hooks)
    logits(model, ids, torch.tensor([5, NULL_LABEL, 2]), hooks)
    changed = (seen[0] != seen[1]).any(-1)
    assert changed[:, 1:].sum() == 0 and changed[:, 0].tolist() == [True, True, False]
    table = word_table(model).weight
    torch.testing.assert_close(seen[0][1, 0] - seen[1][1, 0], table[K + 2] - table[K + 1 + C])


def test_image_bert_embeds_token_type_zero_everywhere_then_layer_norm() -> None:
    """sums = word[[class, ids]] + token_type[0] + pos[0..N]; block 0 receives LN_1e-12(sums)."""
    model = random_model("image_bert")
    ids, labels = inputs(model)
    seen: dict[str, torch.Tensor] = {}
    hooks = HookSet()
    hooks.add("embed", lambda x, ctx: seen.update(sums=x) or x)
    hooks.add("block_in.0", lambda x, ctx: seen.update(x=x) or x)
    logits(model, ids, labels, hooks)
    emb = model.model.embeddings
    seq = torch.cat([model.layout.class_ids(labels)[:, None], ids], dim=1)
    expected = emb.word_embeddings.weight[seq] + emb.token_type_embeddings.weight[0] + emb.position_embeddings.weight
    torch.testing.assert_close(seen["sums"], expected)
    torch.testing.assert_close(seen["x"], F.layer_norm(seen["sums"], (model.width,), emb.LayerNorm.weight,
                                                       emb.LayerNorm.bias, 1e-12))


def test_image_bert_layers_are_post_ln() -> None:
    """Layer i: h = LN_a(x + dense(Attn(x))), out = LN_o(h + dense_o(GELU(dense_i(h)))); no norm
    before attention; ``final_hidden`` is ``last_block``, the last layer's output, un-normed again."""
    model = random_model("image_bert")
    ids, labels = inputs(model)
    seen: dict[str, torch.Tensor] = {}
    hooks = HookSet()
    hooks.add("block_in.0", lambda x, ctx: seen.update(x=x) or x)
    hooks.add("block_out.0", lambda x, ctx: seen.update(out=x) or x)
    hooks.add("final_hidden", lambda x, ctx: seen.update(final=x) or x)
    with torch.no_grad():
        pred = model(ids, labels, hooks)
        layer, x = model.model.encoder.layer[0], seen["x"]
        attn = layer.attention.self
        b, length, d = x.shape
        split = lambda t: t.reshape(b, length, 2, d // 2).transpose(1, 2)  # noqa: E731
        weights = torch.softmax(split(attn.query(x)) @ split(attn.key(x)).transpose(-1, -2) / (d // 2) ** 0.5, -1)
        context = (weights @ split(attn.value(x))).transpose(1, 2).reshape(b, length, d)
        h = layer.attention.output.LayerNorm(x + layer.attention.output.dense(context))
        expected = layer.output.LayerNorm(h + layer.output.dense(F.gelu(layer.intermediate.dense(h))))
    torch.testing.assert_close(seen["out"], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(pred.last_block, seen["final"])


def test_uvit_bert_embeds_without_a_norm_and_ends_with_norm() -> None:
    """site embed = embeddings[[class, ids]] + pos_embed, fed to block 0 as is; ``last_block`` is
    the last out-block's output and ``final_hidden`` its ``norm`` (eps 1e-5)."""
    model = random_model("uvit_bert")
    ids, labels = inputs(model)
    seen: dict[str, torch.Tensor] = {}
    hooks = HookSet()
    hooks.add("embed", lambda x, ctx: seen.update(sums=x) or x)
    hooks.add("block_in.0", lambda x, ctx: seen.update(x=x) or x)
    hooks.add("final_hidden", lambda x, ctx: seen.update(final=x) or x)
    with torch.no_grad():
        pred = model(ids, labels, hooks)
    seq = torch.cat([model.layout.class_ids(labels)[:, None], ids], dim=1)
    torch.testing.assert_close(seen["sums"], model.embeddings.weight[seq] + model.pos_embed)
    assert torch.equal(seen["x"], seen["sums"])
    torch.testing.assert_close(seen["final"], model.norm(pred.last_block))


def test_uvit_bert_out_blocks_take_the_in_blocks_outputs_in_reverse() -> None:
    """``out_blocks.j``'s ``skip_linear`` sees [x, s]: x what ``block_in.(h+1+j)`` returned and s
    what ``block_out.(h-1-j)`` returned."""
    model = random_model("uvit_bert")
    half = len(model.in_blocks)
    ids, labels = inputs(model)
    returned: dict[str, torch.Tensor] = {}
    hooks = HookSet()
    for k in range(model.depth):
        hooks.add(f"block_in.{k}", lambda x, ctx, k=k: returned.setdefault(f"block_in.{k}", x + 0.5))
        hooks.add(f"block_out.{k}", lambda x, ctx, k=k: returned.setdefault(f"block_out.{k}", x))
    received = []
    handles = [block.skip_linear.register_forward_pre_hook(lambda m, args: received.append(args[0]))
               for block in model.out_blocks]
    logits(model, ids, labels, hooks)
    for handle in handles:
        handle.remove()
    d = model.width
    assert len(received) == half == 2
    for j, cat in enumerate(received):
        assert torch.equal(cat[..., :d], returned[f"block_in.{half + 1 + j}"])
        assert torch.equal(cat[..., d:], returned[f"block_out.{half - 1 - j}"])


def test_image_bert_norms_gelu_biases_and_dropout() -> None:
    """All 1 + 2 * depth LayerNorms eps 1e-12; every Linear has a bias; dropout 0.1 (embeddings,
    attention probabilities, both residual outputs) acts in training only."""
    model = ImageBert(ImageBertConfig.tiny())
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 1 + 2 * model.depth and {m.eps for m in norms} == {1e-12}
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Linear))
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.1}
    assert model.model.encoder.layer[0].attention.self.dropout == 0.1
    ids, labels = inputs(model)
    model.eval()
    assert torch.equal(logits(model, ids, labels), logits(model, ids, labels))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(ids, labels).logits, model(ids, labels).logits)


def test_uvit_bert_norms_gelu_biases_and_no_dropout() -> None:
    """2 * depth + 1 LayerNorms eps 1e-5; GELU exact; qkv without bias; no dropout at all (upstream's
    UViTBert passes none to its blocks), so training mode gives the eval logits."""
    model = random_model("uvit_bert")
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * model.depth + 1 and {m.eps for m in norms} == {1e-5}
    assert {m.approximate for m in model.modules() if isinstance(m, nn.GELU)} == {"none"}
    assert all(b.attn.qkv.bias is None and b.attn.proj.bias is not None for b in model.blocks())
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    ids, labels = inputs(model)
    assert torch.equal(logits(model.train(), ids, labels), logits(model.eval(), ids, labels))


@families
def test_every_hook_site_fires_once_in_order_with_its_shape(name: str) -> None:
    model = random_model(name)
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


@families
def test_identity_hooks_are_bit_identical(name: str) -> None:
    model = golden_model(name)
    hooks = HookSet()
    for site in hook_sites(model.depth):
        hooks.add(site, lambda x, ctx: x)
    ids, labels = GOLDEN[name]["inputs.ids"], GOLDEN[name]["inputs.labels"]
    with torch.no_grad():
        plain, hooked = model(ids, labels), model(ids, labels, hooks)
    assert torch.equal(plain.logits, hooked.logits) and torch.equal(plain.last_block, hooked.last_block)


@families
def test_hooks_see_the_image_rows_after_the_class_slot(name: str) -> None:
    """``token_slice`` = 1..N and ``ctx.masked`` marks the masked image tokens (id K)."""
    model = random_model(name)
    ids, labels = inputs(model)
    seen: list[HookContext] = []
    hooks = HookSet()
    hooks.add("logits", lambda x, ctx: seen.append(ctx) or x)
    logits(model, ids, labels, hooks)
    assert seen[0].token_slice == slice(1, model.seq_len + 1) and torch.equal(seen[0].masked, ids == MASK)


def test_image_bert_value_projection_acts_on_the_raw_layer_input() -> None:
    """``value_projection(i)`` is layer i's ``attention.self.value`` (live weight and bias), and
    site ``attn_value.i`` sees it applied to what ``block_in.i`` returned (post-LN: no norm between)."""
    model = random_model("image_bert")
    ids, labels = inputs(model)
    seen: dict[str, torch.Tensor] = {}
    hooks = HookSet()
    for i in range(model.depth):
        hooks.add(f"block_in.{i}", lambda x, ctx, i=i: seen.setdefault(f"in.{i}", x + 0.25))
        hooks.add(f"attn_value.{i}", lambda v, ctx, i=i: seen.setdefault(f"v.{i}", v))
    logits(model, ids, labels, hooks)
    for i in range(model.depth):
        weight, bias = model.value_projection(i)
        value = model.model.encoder.layer[i].attention.self.value
        assert weight is value.weight and bias is value.bias
        torch.testing.assert_close(seen[f"v.{i}"], F.linear(seen[f"in.{i}"], weight, bias))


def test_uvit_bert_value_projection_acts_on_norm1_of_the_block_input() -> None:
    """``value_projection(k)`` = rows 2d..3d of block k's ``qkv.weight`` (a live view, no bias);
    site ``attn_value.k`` sees it applied to the attention's input, ``norm1`` of the block input
    (after ``skip_linear`` for out-blocks)."""
    model = random_model("uvit_bert")
    ids, labels = inputs(model)
    d = model.width
    attn_inputs: dict[int, torch.Tensor] = {}
    values: dict[int, torch.Tensor] = {}
    hooks = HookSet()
    handles = []
    for k, block in enumerate(model.blocks()):
        handles.append(block.attn.register_forward_pre_hook(lambda m, args, k=k: attn_inputs.update({k: args[0]})))
        hooks.add(f"attn_value.{k}", lambda v, ctx, k=k: values.setdefault(k, v))
    logits(model, ids, labels, hooks)
    for handle in handles:
        handle.remove()
    for k, block in enumerate(model.blocks()):
        weight, bias = model.value_projection(k)
        assert weight.data_ptr() == block.attn.qkv.weight[2 * d].data_ptr() and weight.shape == (d, d) and bias is None
        torch.testing.assert_close(values[k], F.linear(attn_inputs[k], weight))


@families
def test_token_embeddings_are_the_raw_code_rows(name: str) -> None:
    """K rows of the one word table (not [MASK], the classes nor the null class), before anything is added."""
    model = random_model(name)
    table = word_table(model)
    rows = model.token_embeddings()
    assert rows.shape == (K, model.width) and rows.data_ptr() == table.weight.data_ptr()
    assert table.num_embeddings == K + C + 2


@families
def test_the_head_is_the_untied_lm_head_and_copyable(name: str) -> None:
    """The head is ``lm_head`` (weight (K, d), bias (K,)), not the word table; a deep copy owns
    copies of both; a module assigned to ``head`` replaces it and is saved as ``head.*``."""
    model = random_model(name)
    lm_head = model.model.lm_head if name == "image_bert" else model.lm_head
    assert model.head is lm_head and tuple(lm_head.weight.shape) == (K, model.width)
    copied = copy.deepcopy(model.head)
    assert len(list(copied.parameters())) == 2
    assert not {p.data_ptr() for p in copied.parameters()} & {p.data_ptr() for p in model.parameters()}
    ids, labels = inputs(model)
    base = logits(model, ids, labels)
    with torch.no_grad():
        lm_head.bias[3] += 1.0
    shift = torch.zeros(K)
    shift[3] = 1.0
    torch.testing.assert_close(logits(model, ids, labels), base + shift)
    model.head = nn.Linear(model.width, 1)
    assert logits(model, ids, labels).shape == (3, model.seq_len, 1)
    assert {k for k in model.state_dict() if k.startswith("head.")} == {"head.weight", "head.bias"}


@families
def test_fresh_is_initialised_as_upstream(name: str) -> None:
    """Linear and Embedding weights std 0.02 (ImageBert: HF BERT's normal; UViTBert: truncated
    normal, ``pos_embed`` too), zero Linear biases, LayerNorms 1 and 0; a new draw each call."""
    cls = FAMILIES[name][0]
    torch.manual_seed(0)
    model = cls(ImageBertConfig(num_hidden_layers=2) if name == "image_bert" else UViTBertConfig(num_hidden_layers=2))
    tables = [m.weight for m in model.modules() if isinstance(m, nn.Linear | nn.Embedding) and m.weight.numel() > 10 ** 5]
    assert tables and all(abs(w.std().item() / 0.02 - 1) < 0.02 for w in tables)
    assert all(not m.bias.any() for m in model.modules() if isinstance(m, nn.Linear | nn.LayerNorm) and m.bias is not None)
    assert all(m.weight.eq(1).all() for m in model.modules() if isinstance(m, nn.LayerNorm))
    if name == "uvit_bert":
        assert abs(model.pos_embed.std().item() / 0.02 - 1) < 0.05
    tiny = random_model(name)
    again = tiny.fresh()
    assert type(again) is cls and again.config == tiny.config
    assert not torch.equal(again.token_embeddings(), tiny.token_embeddings())


@families
def test_describe_and_config_errors(name: str) -> None:
    cls, config = FAMILIES[name]
    described = cls(config).describe()
    assert json.loads(json.dumps(described)) == described
    assert (described["class_position"], described["blank_class"], described["seq_len"]) == ("first", "mask", 16)
    config_cls = type(config)
    with pytest.raises(ValueError, match="num_attention_heads 5 must divide hidden_size"):
        config_cls(num_attention_heads=5)
    with pytest.raises(ValueError, match="positive: image_seq_len=0"):
        config_cls(image_seq_len=0)
    with pytest.raises(ValueError, match="ids must have shape"):
        cls(config)(torch.zeros(2, 17, dtype=torch.long), torch.zeros(2, dtype=torch.long))


def test_config_errors_of_each_family() -> None:
    with pytest.raises(ValueError, match="attn_drop must lie in"):
        ImageBertConfig(attn_drop=1.0)
    with pytest.raises(ValueError, match="num_hidden_layers 21 must be even"):
        UViTBertConfig(num_hidden_layers=21)


# --- 4. the upstream generate() record (read by the sampler's TiTok preset tests) ------------------

@pytest.mark.parametrize(("preset", "steps", "nfe"), [("b64", 8, 15), ("l32", 8, 15), ("s128", 64, 128)])
def test_the_generate_record_is_complete(preset: str, steps: int, nfe: int) -> None:
    """Per step one ``passes`` count (NFE = their sum: linear skips the unconditional pass at
    step 0 where ``cfg_scale`` is 0, power-cosine runs it), two noise tensors and the ids after
    the step, which hold ``mask_len`` masks until the last step fills all."""
    path = FIXTURES / "titok_generate_upstream.safetensors"
    record = load_file(str(path))
    with safe_open(str(path), "pt") as handle:
        settings = json.loads(handle.metadata()[preset])
    p = {k.removeprefix(f"{preset}."): v for k, v in record.items() if k.startswith(f"{preset}.")}
    assert settings["num_sample_steps"] == steps and p["token_uniform"].shape == (steps, 2, 16, K)
    assert p["confidence_uniform"].shape == (steps, 2, 16) and p["ids_per_step"].shape == (steps, 2, 16)
    assert int(p["passes"].sum()) == nfe and torch.equal(p["uncond"], p["passes"] == 2)
    assert bool(p["uncond"][0]) == (settings["guidance_decay"] == "power-cosine")
    masked = (p["ids_per_step"] == MASK).sum(-1)
    assert torch.equal(masked[:-1], p["mask_len"][:-1, None].expand(-1, 2)) and not masked[-1].any()
    assert torch.equal(p["ids_per_step"][-1], p["ids"])
    ratio = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    torch.testing.assert_close(p["choice_temperature"], settings["randomize_temperature"] * (1 - ratio))
    torch.testing.assert_close(p["softmax_temperature"], 0.5 + 0.8 * (1 - ratio))
