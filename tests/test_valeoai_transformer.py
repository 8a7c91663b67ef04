"""valeoai's MaskGIT transformer (v1.0) against the pinned upstream, without the real weights.

Fixtures, both made once by a script run outside the repository against valeoai/Maskgit-pytorch
branch ``v1.0`` commit 674ef1d934963b7550ad9068015e705a525ceecb (``Network/transformer.py``), in a
throwaway environment (torch 2.14.1, ``pytorch_lightning`` stubbed); no upstream code is committed:

- ``backbones/valeoai/keys/mask_transformer_{256,512}.json`` (the listings ``migbench import``
  checks files against): the ``state_dict()`` names and shapes, in order, and the parameter count
  of ``MaskTransformer(img_size=S, hidden_dim=768, codebook_size=1024, f_factor=S // 16, depth=24,
  heads=16, mlp_dim=3072, dropout=0.1)`` (as ``Trainer/vit.py`` builds ``vit_size="base"``) on the
  ``meta`` device, S = 256 and 512 (the provenance is in each file).
- ``fixtures/valeoai_mask_transformer_tiny.safetensors``: ``torch.manual_seed(17)``, then
  ``MaskTransformer(img_size=64, hidden_dim=32, codebook_size=16, f_factor=4, depth=2, heads=2,
  mlp_dim=64, dropout=0.1, nclass=10)`` (= ``MaskTransformerConfig.tiny()``), every LayerNorm gain
  redrawn as 1 + 0.2 N(0, 1) and every other parameter, biases included, as 0.3 N(0, 1) in
  ``named_parameters()`` order; ``.eval()``. Inputs: ``inputs.ids`` (7, 16) drawn with
  ``Generator().manual_seed(3)`` (codes in [0, 16), about 40% set to the mask id 16, row 5 all
  masked, rows 3 and 6 copies of row 1), ``inputs.y`` = [0, 3, 9, 3, 7, 2, -1] and
  ``inputs.drop_label`` = [F, F, F, T, T, T, F]: rows 0-2 conditional, rows 3-5 with the label
  dropped (upstream's drop class 27), row 6 with y = -1, which puts the mask id 16 in the class
  slot (our BLANK_LABEL). ``outputs.logits`` (7, 16, 17) is ``model(ids.view(7, 4, 4), y,
  drop_label)`` under ``no_grad``, upstream's own slice ``[:, :16, :17]``; ``state.*`` the state
  dict. All fp32.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from migbench.backbones.valeoai.mask_transformer import MaskTransformer, MaskTransformerConfig
from safetensors.torch import load_file
from torch import nn

from migbench.api import BLANK_LABEL, NULL_LABEL, HookSet, hook_sites
from migbench.checkpoints import load_strict

FIXTURES = Path(__file__).parent / "fixtures"
LISTINGS = Path(__file__).parents[1] / "backbones" / "valeoai" / "keys"
KEYS = {size: json.loads((LISTINGS / f"mask_transformer_{size}.json").read_text()) for size in (256, 512)}
GOLDEN = load_file(str(FIXTURES / "valeoai_mask_transformer_tiny.safetensors"))
STATE = {k.removeprefix("state."): v for k, v in GOLDEN.items() if k.startswith("state.")}
K = MaskTransformerConfig.tiny().codebook_size


def golden_labels() -> torch.Tensor:
    """Upstream's (y, drop_label) as our labels: dropped -> NULL_LABEL, y = -1 -> BLANK_LABEL."""
    y, drop = GOLDEN["inputs.y"], GOLDEN["inputs.drop_label"]
    return torch.where(drop, NULL_LABEL, torch.where(y == -1, BLANK_LABEL, y))


def golden_model() -> MaskTransformer:
    model = MaskTransformer(MaskTransformerConfig.tiny()).eval()
    load_strict(model, STATE, "valeoai_mask_transformer_tiny")
    return model


def random_model(seed: int = 0) -> MaskTransformer:
    """Tiny, every parameter random (biases too), eval."""
    torch.manual_seed(seed)
    model = MaskTransformer(MaskTransformerConfig.tiny()).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model


def inputs(model: MaskTransformer) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, K, (3, model.seq_len), generator=torch.Generator().manual_seed(0))
    ids[:, ::3] = model.layout.mask_id
    return ids, torch.tensor([0, NULL_LABEL, 9])


@torch.no_grad()
def logits(model: MaskTransformer, ids: torch.Tensor, labels: torch.Tensor, hooks: HookSet | None = None):
    return model(ids, labels, hooks).logits


# --- 1. key listing -------------------------------------------------------------------------------

@pytest.mark.parametrize("img_size", [256, 512])
def test_state_dict_is_upstreams_at_full_size(img_size: int) -> None:
    """Names (in order), shapes and parameter count of upstream's 174,160,874 (256 px) and
    176,306,666 (512 px: pos_emb (1, 1025, 768), bias (1025, 2026)) parameter models."""
    listing = KEYS[img_size]
    with torch.device("meta"):
        model = MaskTransformer(MaskTransformerConfig(img_size=img_size))
    state = model.state_dict()
    assert list(state) == list(listing["keys"])
    assert {k: list(v.shape) for k, v in state.items()} == listing["keys"]
    assert sum(p.numel() for p in model.parameters()) == listing["parameters"]
    assert KEYS[256]["parameters"] == 174_160_874 and "674ef1d934963b7550ad9068015e705a525ceecb" in KEYS[256]["provenance"]


# --- 2. golden outputs ----------------------------------------------------------------------------

@pytest.mark.parametrize("rows", [[0, 1, 2], [3, 4, 5], [6]], ids=["class", "null", "blank"])
def test_logits_match_upstream(rows: list[int]) -> None:
    """Our K code columns equal upstream's ``[:, :N, :K + 1]`` logits, for class labels, dropped
    labels (NULL_LABEL -> the drop class K + 1 + C) and BLANK_LABEL (the mask id in the class slot)."""
    model = golden_model()
    out = logits(model, GOLDEN["inputs.ids"][rows], golden_labels()[rows])
    expected = GOLDEN["outputs.logits"][rows, :, :K]
    assert out.shape == expected.shape
    assert (out - expected).abs().max() <= 1e-4


def test_the_golden_label_kinds_differ() -> None:
    """Rows 1, 3 and 6 share their ids: the class, the drop class and the mask in the class slot
    give different upstream logits (so each kind above is really tested)."""
    reference = GOLDEN["outputs.logits"]
    assert torch.equal(GOLDEN["inputs.ids"][1], GOLDEN["inputs.ids"][3])
    assert torch.equal(GOLDEN["inputs.ids"][1], GOLDEN["inputs.ids"][6])
    assert min((reference[1] - reference[3]).abs().max(), (reference[1] - reference[6]).abs().max()) > 0.1


@pytest.mark.parametrize("build", ["to_empty", "assign"])
def test_a_model_built_on_meta_loads_and_its_head_follows(build: str) -> None:
    """Built on ``meta`` then materialised (``to_empty`` + load, or ``load_state_dict(assign=True)``,
    both of which replace the Parameter objects): the tied head uses the new tensors."""
    with torch.device("meta"):
        model = MaskTransformer(MaskTransformerConfig.tiny())
    _ = model.head  # a head built over the meta tensors must not survive
    if build == "to_empty":
        model.to_empty(device="cpu")
        load_strict(model, STATE, "valeoai_mask_transformer_tiny")
    else:
        model.load_state_dict(STATE, assign=True)
    out = logits(model.eval(), GOLDEN["inputs.ids"], golden_labels())
    assert (out - GOLDEN["outputs.logits"][..., :K]).abs().max() <= 1e-4


# --- 3. what is easy to get wrong -----------------------------------------------------------------

def test_vocabulary_at_full_size() -> None:
    """2026 ids: codes 0..1023, mask 1024, classes 1025..2024, drop class 2025 (NULL_LABEL); BLANK_LABEL -> 1024."""
    layout = MaskTransformerConfig().layout()
    assert (layout.vocab_size, layout.mask_id, layout.class_position) == (2026, 1024, "last")
    assert layout.class_ids(torch.tensor([0, 999, NULL_LABEL, BLANK_LABEL])).tolist() == [1025, 2024, 2025, 1024]
    assert MaskTransformerConfig().num_tokens == 256 and MaskTransformerConfig(img_size=512).num_tokens == 1024


def test_the_class_token_is_last() -> None:
    """A label changes the embedded sequence only at position N, by the difference of its two
    ``tok_emb`` rows, and changes the logits only through that slot."""
    model = random_model()
    ids, _ = inputs(model)
    seen = []
    hooks = HookSet()
    hooks.add("embed", lambda x, ctx: seen.append(x) or x)
    a, b = torch.tensor([0, 1, 2]), torch.tensor([5, NULL_LABEL, 2])
    first, second = logits(model, ids, a, hooks), logits(model, ids, b, hooks)
    changed = (seen[0] != seen[1]).any(-1)
    assert changed[:, :-1].sum() == 0 and changed[:, -1].tolist() == [True, True, False]
    emb, n = model.tok_emb.weight, model.seq_len
    torch.testing.assert_close(seen[0][0, n] - seen[1][0, n], emb[K + 1 + 0] - emb[K + 1 + 5])
    torch.testing.assert_close(seen[0][1, n] - seen[1][1, n], emb[K + 1 + 1] - emb[K + 1 + 10])
    assert torch.equal(first[2], second[2]) and not torch.equal(first[0], second[0])


def test_image_rows_use_bias_rows_0_to_n_minus_1_and_the_code_columns() -> None:
    """``bias[n, :K]`` shifts exactly image row n's logits; the class row ``bias[N]`` and the
    columns of the mask and the classes change nothing."""
    model = random_model()
    ids, labels = inputs(model)
    base = logits(model, ids, labels)
    with torch.no_grad():
        model.bias[model.seq_len] += 5.0
        model.bias[:, K:] += 5.0
    assert torch.equal(logits(model, ids, labels), base)
    shift = torch.zeros(model.seq_len, K)
    shift[0, 3], shift[-1, 7] = 1.0, -2.0
    with torch.no_grad():
        model.bias[: model.seq_len, :K] += shift
    torch.testing.assert_close(logits(model, ids, labels), base + shift)


def test_norm_eps_and_gelu() -> None:
    """first_layer and last_layer LayerNorms: eps 1e-12; the blocks': 1e-5; GELU exact (erf)."""
    model = MaskTransformer(MaskTransformerConfig.tiny())
    edge = [model.first_layer[0], model.first_layer[4], model.last_layer[0], model.last_layer[4]]
    assert [m.eps for m in edge] == [1e-12] * 4
    block = [m for m in model.transformer.modules() if isinstance(m, nn.LayerNorm)]
    assert len(block) == 2 * model.depth and {m.eps for m in block} == {1e-5}
    assert {m.approximate for m in model.modules() if isinstance(m, nn.GELU)} == {"none"}


def test_every_hook_site_fires_once_with_its_shape() -> None:
    model = random_model()
    calls: Counter[str] = Counter()
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = HookSet()
    for site in hook_sites(model.depth):
        hooks.add(site, lambda x, ctx, site=site: (calls.update([site]), shapes.update({site: tuple(x.shape)}), x)[2])
    ids, labels = inputs(model)
    pred = model(ids, labels, hooks)
    hidden = (3, model.seq_len + 1, model.width)
    assert calls == Counter(hook_sites(model.depth))
    assert shapes == {site: (3, model.seq_len, K) if site == "logits" else hidden for site in hook_sites(model.depth)}
    assert pred.last_block.shape == hidden


def test_value_projection_is_the_third_of_in_proj() -> None:
    """``value_projection(i)`` = rows 2d..3d of block i's ``in_proj_weight``/``in_proj_bias``, live views."""
    model = random_model()
    d = model.width
    for index in range(model.depth):
        mha = model.transformer.layers[index][0].fn.mha
        weight, bias = model.value_projection(index)
        assert weight.data_ptr() == mha.in_proj_weight[2 * d].data_ptr() and weight.shape == (d, d)
        assert bias.data_ptr() == mha.in_proj_bias[2 * d:].data_ptr() and bias.shape == (d,)


def test_the_head_is_tied_copyable_and_out_of_the_state_dict() -> None:
    """The head holds last_layer, tok_emb and bias (a deep copy owns copies of all three), adds no
    key of its own; a module assigned to ``head`` (Token-Critic's) replaces it and is saved as ``head.*``."""
    model = random_model()
    head = model.head
    assert head is model.head and head.tok_emb is model.tok_emb and head.bias is model.bias
    assert not any(k.startswith("head.") for k in model.state_dict())
    copied = copy.deepcopy(head)
    assert len(list(copied.parameters())) == len(list(head.parameters())) == 2 + len(list(model.last_layer.parameters()))
    assert not {p.data_ptr() for p in copied.parameters()} & {p.data_ptr() for p in model.parameters()}
    model.head = nn.Linear(model.width, 1)
    ids, labels = inputs(model)
    assert logits(model, ids, labels).shape == (3, model.seq_len, 1)
    assert {k for k in model.state_dict() if k.startswith("head.")} == {"head.weight", "head.bias"}


def test_describe_and_config_errors() -> None:
    described = MaskTransformer(MaskTransformerConfig.tiny()).describe()
    assert json.loads(json.dumps(described)) == described
    assert (described["class_position"], described["head"], described["seq_len"]) == ("last", "tied", 16)
    with pytest.raises(ValueError, match="heads 5 must divide hidden_dim 768"):
        MaskTransformerConfig(heads=5)
    with pytest.raises(ValueError, match="positive: depth=0"):
        MaskTransformerConfig(depth=0)
