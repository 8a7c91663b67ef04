"""AutoNAT-L's U-ViT against the pinned upstreams, without the real weights.

Fixtures, both made once by a script run outside the repository against LeapLabTHU/ImprovedNAT
commit 2ca99946b2ad1969672d05213d269e1256249f6b (``libs/nat_model.py``; KA-MIG's copy is
byte-identical) and GuotaoLiang/KA-MIG commit 0b4ceb150ef64207af65e2c9227c9b256a3ef094
(``libs/nat_model_graph.py``), in a throwaway environment (torch 2.14.1, ``loguru`` stubbed, the
repository's own timm 0.3.2, no xformers, so upstream's explicit-softmax attention runs); no
upstream code is committed:

- ``backbones/autonat/keys/uvit.json`` (the listing ``migbench import`` checks files against):
  the ``state_dict()`` names and shapes, in order, and the parameter count of ``UViT(img_size=16,
  codebook_size=1024, embed_dim=768, depth=24, num_heads=8, mlp_ratio=4, qkv_bias=False,
  num_classes=1001, use_checkpoint=False, skip=True)`` (``configs/AutoNAT_L.yaml``) on ``meta``.
- ``fixtures/autonat_uvit_tiny.safetensors``: ``torch.manual_seed(18)``, then ``UViT(img_size=4,
  codebook_size=16, embed_dim=16, depth=4, num_heads=2, mlp_ratio=4, qkv_bias=False,
  num_classes=11, skip=True)`` (= ``UViTConfig.tiny()``), every LayerNorm gain redrawn as
  1 + 0.2 N(0, 1) and every other parameter, biases and tables included, as 0.3 N(0, 1) in
  ``named_parameters()`` order; ``.eval()``. Inputs: ``inputs.ids`` (7, 16) drawn with
  ``Generator().manual_seed(3)`` (codes in [0, 16), about 40% set to the mask id 16, row 5 all
  masked, rows 3 and 6 copies of row 1), ``inputs.context`` = [0, 3, 9, 10, 10, 10, 5]
  (upstream's context ids; 10 = the null class). ``outputs.logits`` (7, 16, 16) is
  ``model(ids, context=context[:, None])`` under ``no_grad`` (upstream's own ``[:, 1:, :16]``).
  Fusion placement: KA-MIG's ``UViTGraphAdapter`` (same config, the same state loaded strictly)
  with its ``GraphAdapter`` replaced by a stub returning, as the real one does, three lists the
  forward ``.pop()``s before each block: ``re`` with ``inputs.fusion_offsets[4 - i]`` at index i
  and zeros for ``co`` and ``pn``, so block k of the call order gets ``fusion_offsets[k]``
  (5, 3, 17, 16; ``0.5 N(0, 1)`` from ``Generator().manual_seed(4)``, the class slot included)
  added to its input. ``outputs.fused_logits`` (3, 16, 16) is its output on the rows
  ``inputs.fusion_rows`` = [0, 3, 5]; with zero offsets it gave ``outputs.logits`` exactly.
  ``state.*`` the state dict. All fp32.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from migbench.backbones.autonat.uvit import UViT, UViTConfig
from safetensors.torch import load_file
from torch import nn

from migbench.api import BLANK_LABEL, NULL_LABEL, HookContext, HookSet, hook_sites
from migbench.checkpoints import load_strict

FIXTURES = Path(__file__).parent / "fixtures"
LISTING = json.loads((Path(__file__).parents[1] / "backbones" / "autonat" / "keys" / "uvit.json").read_text())
GOLDEN = load_file(str(FIXTURES / "autonat_uvit_tiny.safetensors"))
STATE = {k.removeprefix("state."): v for k, v in GOLDEN.items() if k.startswith("state.")}
TINY = UViTConfig.tiny()
K, C = TINY.codebook_size, TINY.num_classes


def golden_labels() -> torch.Tensor:
    """Upstream's context ids as our labels: the null context C -> NULL_LABEL."""
    context = GOLDEN["inputs.context"]
    return torch.where(context == C, NULL_LABEL, context)


def golden_model() -> UViT:
    model = UViT(TINY).eval()
    load_strict(model, STATE, "autonat_uvit_tiny")
    return model


def random_model(seed: int = 0) -> UViT:
    """Tiny, every parameter random (biases too), eval."""
    torch.manual_seed(seed)
    model = UViT(TINY).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model


def inputs(model: UViT) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, K, (3, model.seq_len), generator=torch.Generator().manual_seed(0))
    ids[:, ::3] = model.layout.mask_id
    return ids, torch.tensor([0, NULL_LABEL, 9])


@torch.no_grad()
def logits(model: UViT, ids: torch.Tensor, labels: torch.Tensor, hooks: HookSet | None = None) -> torch.Tensor:
    return model(ids, labels, hooks).logits


def adding(site_of_block, offsets: torch.Tensor) -> HookSet:
    """Hooks adding ``offsets[k]`` (B, L, d) at ``site_of_block(k)`` for every block k."""
    hooks = HookSet()
    for k in range(len(offsets)):
        hooks.add(site_of_block(k), lambda x, ctx, k=k: x + offsets[k])
    return hooks


# --- 1. key listing -------------------------------------------------------------------------------

def test_state_dict_is_upstreams_at_full_size() -> None:
    """Names (in order), shapes and parameter count of upstream's 314-key, 193,655,297-parameter AutoNAT-L."""
    with torch.device("meta"):
        model = UViT()
    state = model.state_dict()
    assert list(state) == list(LISTING["keys"])
    assert {k: list(v.shape) for k, v in state.items()} == LISTING["keys"]
    assert sum(p.numel() for p in model.parameters()) == LISTING["parameters"] == 193_655_297
    assert len(state) == 314 and "2ca99946b2ad1969672d05213d269e1256249f6b" in LISTING["provenance"]


def test_full_size_blocks_in_call_order() -> None:
    """25 hooked blocks: in_blocks.0..11, then the mid block (index 12), then out_blocks.0..11."""
    with torch.device("meta"):
        model = UViT()
    blocks = model.blocks()
    assert model.depth == len(blocks) == 25 and blocks[12] is model.mid_block
    assert blocks[:12] == list(model.in_blocks) and blocks[13:] == list(model.out_blocks)
    assert all(b.skip_linear is None for b in blocks[:13]) and all(b.skip_linear is not None for b in blocks[13:])


# --- 2. golden outputs ----------------------------------------------------------------------------

@pytest.mark.parametrize("rows", [[0, 1, 2, 6], [3, 4, 5]], ids=["class", "null"])
def test_logits_match_upstream(rows: list[int]) -> None:
    """Our logits equal upstream's ``[:, 1:, :K]``, for class labels and NULL_LABEL (context C)."""
    model = golden_model()
    out = logits(model, GOLDEN["inputs.ids"][rows], golden_labels()[rows])
    expected = GOLDEN["outputs.logits"][rows]
    assert out.shape == expected.shape
    assert (out - expected).abs().max() <= 1e-4


def test_blank_label_is_the_null_context() -> None:
    """BLANK_LABEL shows the null class (the context table has no [MASK] row): upstream's context C."""
    model = golden_model()
    rows = [3, 4, 5]
    out = logits(model, GOLDEN["inputs.ids"][rows], torch.full((3,), BLANK_LABEL))
    assert (out - GOLDEN["outputs.logits"][rows]).abs().max() <= 1e-4


def test_the_golden_label_kinds_differ() -> None:
    """Rows 1, 3 and 6 share their ids: class 3, the null class and class 5 give different upstream logits."""
    reference = GOLDEN["outputs.logits"]
    assert torch.equal(GOLDEN["inputs.ids"][1], GOLDEN["inputs.ids"][3])
    assert torch.equal(GOLDEN["inputs.ids"][1], GOLDEN["inputs.ids"][6])
    assert min((reference[1] - reference[3]).abs().max(), (reference[1] - reference[6]).abs().max()) > 0.1


def test_block_in_is_where_ka_mig_fuses() -> None:
    """Adding upstream's per-block fusion terms at ``block_in.k`` (every position, the class slot
    first) reproduces KA-MIG's ``UViTGraphAdapter``: before the block, before ``skip_linear`` for
    out-blocks, and not into the skips."""
    model, rows, offsets = golden_model(), GOLDEN["inputs.fusion_rows"], GOLDEN["inputs.fusion_offsets"]
    out = logits(model, GOLDEN["inputs.ids"][rows], golden_labels()[rows], adding(lambda k: f"block_in.{k}", offsets))
    assert (out - GOLDEN["outputs.fused_logits"]).abs().max() <= 1e-4
    assert (GOLDEN["outputs.fused_logits"] - GOLDEN["outputs.logits"][rows]).abs().max() > 0.1


def test_adding_after_the_previous_block_instead_is_not_ka_migs() -> None:
    """The same terms added at ``block_out.(k-1)`` (k >= 1) would also enter the in-blocks' skips:
    a different network, far from upstream's (so the test above pins the placement)."""
    model, rows, offsets = golden_model(), GOLDEN["inputs.fusion_rows"], GOLDEN["inputs.fusion_offsets"]
    hooks = adding(lambda k: f"block_out.{k - 1}" if k else "block_in.0", offsets)
    out = logits(model, GOLDEN["inputs.ids"][rows], golden_labels()[rows], hooks)
    assert (out - GOLDEN["outputs.fused_logits"]).abs().max() > 0.1


@pytest.mark.parametrize("build", ["to_empty", "assign"])
def test_a_model_built_on_meta_loads_and_its_head_follows(build: str) -> None:
    """Built on ``meta`` then materialised (``to_empty`` + load, or ``load_state_dict(assign=True)``):
    the tied head uses the new tensors."""
    with torch.device("meta"):
        model = UViT(TINY)
    _ = model.head
    if build == "to_empty":
        model.to_empty(device="cpu")
        load_strict(model, STATE, "autonat_uvit_tiny")
    else:
        model.load_state_dict(STATE, assign=True)
    out = logits(model.eval(), GOLDEN["inputs.ids"], golden_labels())
    assert (out - GOLDEN["outputs.logits"]).abs().max() <= 1e-4


# --- 3. what is easy to get wrong -----------------------------------------------------------------

def test_vocabulary_at_full_size() -> None:
    """Codes 0..1023 and mask 1024 (``token_emb``, 1025 rows); classes 1025..2024 and the null class
    2025 = context rows 0..1000 (``context_embed``, 1001 rows); BLANK_LABEL -> the null class."""
    config = UViTConfig()
    layout = config.layout()
    assert (layout.mask_id, layout.class_offset, layout.null_class_id, layout.class_position) == (1024, 1025, 2025, "first")
    assert layout.class_ids(torch.tensor([0, 999, NULL_LABEL, BLANK_LABEL])).tolist() == [1025, 2024, 2025, 2025]
    assert layout.null_class_id - layout.class_offset == 1000 and layout.blank_id == layout.null_class_id
    with torch.device("meta"):
        model = UViT(config)
    assert model.token_emb.word_embeddings.num_embeddings == 1025 and model.context_embed.word_embeddings.num_embeddings == 1001
    assert (config.num_tokens, config.blocks, config.mlp_hidden) == (256, 25, 3072)


def test_the_class_token_is_first_from_the_context_table() -> None:
    """A label changes the embedded sums only at position 0, by the difference of its two
    ``context_embed`` rows (NULL_LABEL -> row C), and changes the logits only through that slot."""
    model = random_model()
    ids, _ = inputs(model)
    seen = []
    hooks = HookSet()
    hooks.add("embed", lambda x, ctx: seen.append(x) or x)
    a, b = torch.tensor([0, 1, 2]), torch.tensor([5, NULL_LABEL, 2])
    first, second = logits(model, ids, a, hooks), logits(model, ids, b, hooks)
    changed = (seen[0] != seen[1]).any(-1)
    assert changed[:, 1:].sum() == 0 and changed[:, 0].tolist() == [True, True, False]
    table = model.context_embed.word_embeddings.weight
    torch.testing.assert_close(seen[0][0, 0] - seen[1][0, 0], table[0] - table[5])
    torch.testing.assert_close(seen[0][1, 0] - seen[1][1, 0], table[1] - table[C])
    assert torch.equal(first[2], second[2]) and not torch.equal(first[0], second[0])


def test_each_slot_gets_its_own_table_layernorm() -> None:
    """After site ``embed`` the class slot goes through ``context_embed.LayerNorm`` and the image
    rows through ``token_emb.LayerNorm`` (both eps 1e-6): block 0 receives exactly that."""
    model = random_model()
    ids, labels = inputs(model)
    seen = {}
    hooks = HookSet()
    hooks.add("embed", lambda x, ctx: seen.update(sums=x) or x)
    hooks.add("block_in.0", lambda x, ctx: seen.update(x=x) or x)
    logits(model, ids, labels, hooks)
    sums = seen["sums"]
    expected = torch.cat([model.context_embed.LayerNorm(sums[:, :1]), model.token_emb.LayerNorm(sums[:, 1:])], 1)
    torch.testing.assert_close(seen["x"], expected)
    assert model.token_emb.LayerNorm.eps == model.context_embed.LayerNorm.eps == 1e-6


def test_out_blocks_take_the_in_blocks_outputs_in_reverse_after_block_in() -> None:
    """``out_blocks.j``'s ``skip_linear`` sees [x, s]: x what site ``block_in.(h+1+j)`` returned
    (a hook's change included) and s what ``block_out.(h-1-j)`` returned (the in-block's output)."""
    model = random_model()
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
    for j, cat in enumerate(received):
        assert torch.equal(cat[..., :d], returned[f"block_in.{half + 1 + j}"])
        assert torch.equal(cat[..., d:], returned[f"block_out.{half - 1 - j}"])


def test_block_in_of_the_middle_index_feeds_the_mid_block() -> None:
    """Site ``block_in.{depth // 2}`` is the mid block's input (``block_in.12`` at full size)."""
    model = random_model()
    ids, labels = inputs(model)
    middle = TINY.depth // 2
    marked = {}
    hooks = HookSet()
    hooks.add(f"block_in.{middle}", lambda x, ctx: marked.setdefault("x", x + 1.0))
    received = []
    handle = model.mid_block.register_forward_pre_hook(lambda m, args: received.append(args[0]))
    logits(model, ids, labels, hooks)
    handle.remove()
    assert len(received) == 1 and torch.equal(received[0], marked["x"])


def test_final_hidden_is_normed_and_last_block_is_not() -> None:
    """``last_block`` is the last out-block's output; site ``final_hidden`` sees ``norm`` of it."""
    model = random_model()
    ids, labels = inputs(model)
    seen = {}
    hooks = HookSet()
    hooks.add("final_hidden", lambda x, ctx: seen.update(x=x) or x)
    hooks.add(f"block_out.{model.depth - 1}", lambda x, ctx: seen.update(out=x) or x)
    with torch.no_grad():
        pred = model(ids, labels, hooks)
    assert torch.equal(pred.last_block, seen["out"])
    torch.testing.assert_close(seen["x"], model.norm(pred.last_block))


def test_norm_eps_gelu_bias_and_dropout() -> None:
    """Embedding LayerNorms eps 1e-6, all others 1e-5; GELU exact (erf); qkv without bias, proj
    with; embedding dropout 0.1 on the image rows, 0 on the context, none in eval."""
    model = UViT(TINY)
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 + 2 * model.depth + 2
    assert sorted(m.eps for m in norms) == [1e-6] * 2 + [1e-5] * (2 * model.depth + 2)
    assert {m.approximate for m in model.modules() if isinstance(m, nn.GELU)} == {"none"}
    assert all(b.attn.qkv.bias is None and b.attn.proj.bias is not None for b in model.blocks())
    assert (model.token_emb.dropout.p, model.context_embed.dropout.p) == (0.1, 0.0)
    ids, labels = inputs(model)
    model.eval()
    assert torch.equal(logits(model, ids, labels), logits(model, ids, labels))


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
    """``token_slice`` = 1..N and ``ctx.masked`` marks the masked image tokens."""
    model = random_model()
    ids, labels = inputs(model)
    seen: list[HookContext] = []
    hooks = HookSet()
    hooks.add("logits", lambda x, ctx: seen.append(ctx) or x)
    logits(model, ids, labels, hooks)
    assert seen[0].token_slice == slice(1, model.seq_len + 1) and torch.equal(seen[0].masked, ids == K)


def test_value_projection_is_the_last_third_of_qkv() -> None:
    """``value_projection(k)`` = rows 2d..3d of block k's (call order) ``qkv.weight``, a live view; no bias."""
    model = random_model()
    d = model.width
    for index, block in enumerate(model.blocks()):
        weight, bias = model.value_projection(index)
        assert weight.data_ptr() == block.attn.qkv.weight[2 * d].data_ptr() and weight.shape == (d, d)
        assert bias is None


def test_token_embeddings_are_the_raw_code_rows() -> None:
    """K rows of ``token_emb.word_embeddings`` (not the mask row), before its LayerNorm."""
    model = random_model()
    table = model.token_embeddings()
    assert table.shape == (K, model.width) and table.data_ptr() == model.token_emb.word_embeddings.weight.data_ptr()


def test_the_head_is_tied_copyable_detached_and_out_of_the_state_dict() -> None:
    """The head holds ``mlm_layer`` and ``token_emb.word_embeddings`` (a deep copy owns copies of
    both), adds no key of its own, and sends no gradient into the table (upstream's
    ``.data.detach()``); a module assigned to ``head`` replaces it and is saved as ``head.*``."""
    model = random_model()
    head = model.head
    assert head is model.head and head.mlm_layer is model.mlm_layer
    assert head.word_embeddings is model.token_emb.word_embeddings
    assert not any(k.startswith("head.") for k in model.state_dict())
    copied = copy.deepcopy(head)
    assert len(list(copied.parameters())) == 1 + len(list(model.mlm_layer.parameters()))
    assert not {p.data_ptr() for p in copied.parameters()} & {p.data_ptr() for p in model.parameters()}
    hidden = torch.randn(2, model.seq_len, model.width)
    head(hidden).sum().backward()
    assert model.token_emb.word_embeddings.weight.grad is None and model.mlm_layer.fc.weight.grad is not None
    model.head = nn.Linear(model.width, 1)
    ids, labels = inputs(model)
    assert logits(model, ids, labels).shape == (3, model.seq_len, 1)
    assert {k for k in model.state_dict() if k.startswith("head.")} == {"head.weight", "head.bias"}


def test_the_head_scores_the_code_columns_of_the_bias() -> None:
    """``mlm_layer.bias[..., c]`` shifts code c's logits at every image row; the mask column changes nothing."""
    model = random_model()
    ids, labels = inputs(model)
    base = logits(model, ids, labels)
    with torch.no_grad():
        model.mlm_layer.bias[..., K] += 5.0
    assert torch.equal(logits(model, ids, labels), base)
    with torch.no_grad():
        model.mlm_layer.bias[..., 3] += 1.0
    shift = torch.zeros(K)
    shift[3] = 1.0
    torch.testing.assert_close(logits(model, ids, labels), base + shift)


def test_describe_and_config_errors() -> None:
    described = UViT(TINY).describe()
    assert json.loads(json.dumps(described)) == described
    assert (described["class_position"], described["blank_class"], described["blocks"], described["seq_len"]) == \
        ("first", "null", 5, 16)
    with pytest.raises(ValueError, match="num_heads 5 must divide embed_dim 768"):
        UViTConfig(num_heads=5)
    with pytest.raises(ValueError, match="depth 3 must be even"):
        UViTConfig(depth=3)
    with pytest.raises(ValueError, match="positive: side=0"):
        UViTConfig(side=0)
    with pytest.raises(ValueError, match="ids must have shape"):
        UViT(TINY)(torch.zeros(2, 17, dtype=torch.long), torch.zeros(2, dtype=torch.long))
