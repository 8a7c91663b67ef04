"""KA-MIG's released files through our KA-MIG method, against the pinned upstream, without the files.

Made once by a script run outside the repository against GuotaoLiang/KA-MIG commit
0b4ceb150ef64207af65e2c9227c9b256a3ef094 (``libs/nat_model_graph.py``, ``libs/graph_layer.py``,
``libs/nat_model.py``) in a throwaway environment (torch 2.14.1, torch_geometric 2.8.1, loguru
stubbed, the repository's timm 0.3.2); no upstream code or data file is committed:

- ``backbones/autonat/keys/ka_mig_adapter.json``: the ``graph_layer.*`` (114 keys, 33,663,744
  parameters) and ``mlm_layer.*`` (5 keys, 593,153) names and shapes of
  ``UViTGraphAdapter(img_size=16, codebook_size=1024, embed_dim=768, depth=24, num_heads=8,
  mlp_ratio=4, qkv_bias=False, num_classes=1001, skip=True, gnn='gcn')`` (configs/GraphNAT_L_infer.yaml)
  on the ``meta`` device: what ``ka_mig_autonat_l`` keeps of ``graph_nnet_ema.pth``.
- ``backbones/autonat/keys/ka_mig_graph_{co,s}.json``: names and shapes of the two released
  ``graph_prior/*.pkl`` as :func:`migbench.checkpoints.read_tensor_pickle` reads them.
- ``fixtures/autonat_ka_mig_tiny.safetensors``: tiny graphs in upstream's formats, drawn with
  ``Generator().manual_seed(1818)`` over K = 16 codes: G_co from 4 random neighbours per node with
  counts in [5, 300), G_s from 2 random neighbours per node weighted exp(-5 JS), JS ~ U(0, 1e-3),
  in float64, each through upstream's ``convert_and_normalize`` (self loops of weight 1, w
  deg^-1/2[row] deg^-1/2[col], unweighted out-degree); G_p (10, 16, 16) the row-normalised
  indicator of U(0, 1) < 0.6, row (2, 5) empty (``co_edge_*``, ``s_edge_*``, ``class_pos``).
  Each pickled (protocol 4) and passed to ``UViTGraphAdapter(img_size=4, codebook_size=16,
  embed_dim=32, depth=4, num_heads=2, mlp_ratio=4, qkv_bias=False, num_classes=11, skip=True)``
  after ``torch.manual_seed(18)``; every LayerNorm gain redrawn as 1 + 0.2 N(0, 1), every
  ``graph_layer`` parameter (zero convs included: not zero) as 0.2 N(0, 1), every other parameter
  as 0.3 N(0, 1), in ``named_parameters()`` order; ``.eval()``. Inputs (same generator): ``ids``
  (6, 16) codes with about 40% set to the mask id 16, row 4 all masked, row 5 none;
  ``context`` = [0, 3, 9, 10, 2, 10] (10 = the null class). ``logits`` (6, 16, 16) =
  ``model(ids, context=context[:, None])``; ``adds`` (5, 6, 17, 32) = what block k (call order)
  adds, ``re[4-k] + co[4-k] - pos_neg[4-k]`` of ``model.graph_layer(word_embeddings[:16], ids,
  context, ids == 16)``; ``logits_backbone`` = ``libs.nat_model.UViT`` (same config) with the
  backbone part of the state (upstream's zero-initialised adapter gives these exactly);
  ``state.*`` = ``model.state_dict()`` (the tiny ``graph_nnet_ema.pth``). All fp32 but G_s (fp64).
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from migbench.methods.ka_mig.fusion import GraphAdapter, KAMIGModule, Switches
from migbench.methods.ka_mig.release import (
    ADAPTER,
    BACKBONE,
    CHECKPOINTS,
    GRAPH_CO,
    GRAPH_P,
    GRAPH_S,
    head_state,
    release_graph,
    release_incompatibility,
    release_module,
    split_adapter,
)
from safetensors.torch import load_file
from torch import nn

from migbench import checkpoints
from migbench.api import NULL_LABEL, HookContext
from migbench.checkpoints import CheckpointError, extract_state, load_strict

ROOT = Path(__file__).parents[1]
LISTINGS = ROOT / "backbones" / "autonat" / "keys"
GOLDEN = load_file(str(Path(__file__).parent / "fixtures" / "autonat_ka_mig_tiny.safetensors"))
STATE = {k.removeprefix("state."): v for k, v in GOLDEN.items() if k.startswith("state.")}
K, N, WIDTH, BLOCKS, NULL_CLASS = 16, 16, 32, 5, 10
SPECS = {spec.name: spec for spec in CHECKPOINTS}


def listing(name: str) -> dict:
    return json.loads((LISTINGS / f"{name}.json").read_text())


def golden_graphs():
    co = release_graph({"edge_index": GOLDEN["co_edge_index"], "edge_weight": GOLDEN["co_edge_weight"]})
    sem = release_graph({"edge_index": GOLDEN["s_edge_index"], "edge_weight": GOLDEN["s_edge_weight"]})
    return co, sem, release_incompatibility(GOLDEN["class_pos"])


def golden_labels() -> torch.Tensor:
    return torch.where(GOLDEN["context"] == NULL_CLASS, NULL_LABEL, GOLDEN["context"])


class StandInHead(nn.Module):
    """A head holding upstream's ``mlm_layer`` names (fc, ln, bias) and a tied table, as a U-ViT head may."""

    def __init__(self) -> None:
        super().__init__()
        self.mlm_layer = nn.ModuleDict({"fc": nn.Linear(WIDTH, WIDTH), "ln": nn.LayerNorm(WIDTH)})
        self.mlm_layer.register_parameter("bias", nn.Parameter(torch.zeros(1, 1, K + 1)))
        self.word_embeddings = nn.Embedding(K + 1, WIDTH)


def test_graph_adapter_names_are_the_released_keys_at_full_size() -> None:
    keys = listing("ka_mig_adapter")
    adapter = {k.removeprefix("graph_layer."): tuple(v) for k, v in keys["keys"].items() if k.startswith("graph_layer.")}
    head = {k: tuple(v) for k, v in keys["keys"].items() if k.startswith("mlm_layer.")}
    assert len(adapter) == 114 and len(head) == 5 and len(keys["keys"]) == 119
    with torch.device("meta"):
        ours = GraphAdapter(768, 25)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == adapter
    assert sum(p.numel() for p in ours.parameters()) == 33_663_744
    assert keys["parameters"] == 33_663_744 + sum(torch.Size(s).numel() for s in head.values()) == 34_256_897


def test_the_two_parts_of_the_released_file_are_the_whole_file() -> None:
    """ka_mig_autonat_l (adapter + head) and ka_mig_autonat_l_backbone (the U-ViT's listing)
    cover graph_nnet_ema.pth's 428 keys, 227,319,041 parameters; they share only mlm_layer."""
    adapter, uvit = listing("ka_mig_adapter")["keys"], listing("uvit")
    assert len(uvit["keys"]) == 314 and uvit["parameters"] == 193_655_297
    assert set(adapter) & set(uvit["keys"]) == {k for k in adapter if k.startswith("mlm_layer.")}
    assert all(adapter[k] == uvit["keys"][k] for k in adapter if k.startswith("mlm_layer."))
    assert len(set(adapter) | set(uvit["keys"])) == 428
    assert uvit["parameters"] + 33_663_744 == 227_319_041


def test_the_block_order_is_upstreams_reversed_index() -> None:
    adapter = GraphAdapter(8, 25)
    assert adapter.positive(0) is adapter.zero_convs[24] and adapter.negative(24) is adapter.zero_convs_pos[0]
    assert adapter.positive(12) is adapter.zero_convs[12]
    x = torch.randn(3, 8)
    conv = nn.Conv1d(8, 8, 1)
    adapter.zero_convs[3].load_state_dict(conv.state_dict())  # Conv1d's own keys and shapes
    assert torch.allclose(adapter.zero_convs[3](x), conv(x.T[None])[0].T, atol=1e-6)


def test_the_specs_split_the_released_file_into_the_methods_part_and_the_backbones() -> None:
    adapter = extract_state(SPECS[ADAPTER], STATE)
    backbone = extract_state(SPECS[BACKBONE], STATE)
    assert set(adapter) == {k for k in STATE if k.startswith(("graph_layer.", "mlm_layer."))}
    assert set(backbone) == {k for k in STATE if not k.startswith("graph_layer.")}
    assert len(adapter) == 2 * 3 * 2 + 2 + 2 * BLOCKS * 2 + 5  # GCNs, conv1, zero convs, head
    graph, head = split_adapter(adapter)
    assert len(graph) == len(adapter) - 5 and set(head) == {k for k in adapter if k.startswith("mlm_layer.")}
    with pytest.raises(CheckpointError, match="beyond graph_layer"):
        split_adapter(STATE)


def test_graph_listings_and_pinned_files() -> None:
    co, s = listing(GRAPH_CO), listing(GRAPH_S)
    assert co["keys"] == {"edge_index": [2, 53193], "edge_weight": [53193]}
    assert s["keys"] == {"edge_index": [2, 3072], "edge_weight": [3072]}
    for name in (GRAPH_CO, GRAPH_S):
        spec = SPECS[name]
        assert len(spec.sha256) == 64 and spec.size > 0 and spec.fields == ("edge_index", "edge_weight")
        assert spec.listing.endswith(f"keys/{name}.json")


def write_pickle(path: Path, obj: object) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


def test_graph_pickles_convert_once_through_a_restricted_reader(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MIGBENCH_CHECKPOINTS", str(tmp_path / "cache"))
    edges = [GOLDEN["s_edge_index"], GOLDEN["s_edge_weight"]]
    source = write_pickle(tmp_path / "s.pkl", edges)
    spec = dataclasses.replace(SPECS[GRAPH_S], sha256="", size=0, listing="")
    checkpoints.import_file(spec, source)
    state, entry = checkpoints.load_state(GRAPH_S)
    assert torch.equal(state["edge_index"], edges[0]) and torch.equal(state["edge_weight"], edges[1])
    assert state["edge_weight"].dtype == torch.float64 and entry["source_sha256"] == checkpoints.sha256_file(source)
    graph = release_graph(state)
    assert graph.edge_weight.dtype == torch.float32 and torch.equal(graph.edge_index, edges[0])


class Payload:
    def __reduce__(self):
        return (print, ("ran",))


def test_the_graph_reader_runs_no_code_from_the_file(tmp_path, capsys) -> None:
    spec = dataclasses.replace(SPECS[GRAPH_S], sha256="", size=0, listing="")
    with pytest.raises(CheckpointError, match="builtins.print is not allowed"):
        checkpoints.import_file(spec, write_pickle(tmp_path / "bad.pkl", [Payload(), torch.zeros(3)]))
    assert "ran" not in capsys.readouterr().out
    with pytest.raises(CheckpointError, match="not 2 tensor"):
        checkpoints.import_file(spec, write_pickle(tmp_path / "one.pkl", [torch.zeros(3)]))


def test_released_class_position_graph_becomes_our_indicator() -> None:
    class_pos = GOLDEN["class_pos"]
    indicator = release_incompatibility(class_pos)
    assert indicator.dtype == torch.bool and not indicator[2, 5].any()
    assert torch.equal(indicator.float() / indicator.sum(-1, keepdim=True).clamp_min(1), class_pos)
    bad = class_pos.clone()
    bad[1, 2, bad[1, 2].nonzero()[0]] *= 2
    with pytest.raises(CheckpointError, match=r"class 1, position 2"):
        release_incompatibility(bad)


def golden_module(head: nn.Module | None = None) -> KAMIGModule:
    backbone = SimpleNamespace(width=WIDTH, depth=BLOCKS, head=head or StandInHead())
    return release_module(backbone, extract_state(SPECS[ADAPTER], STATE), *golden_graphs())


@pytest.mark.parametrize("precomputed", [True, False])
def test_every_blocks_addition_equals_upstreams(precomputed) -> None:
    """Block k's fusion (x = 0 in, class slot first) equals upstream's re + co - pos_neg at 4 - k."""
    module = golden_module()
    switches = Switches(negative_positions="all")
    ids, labels = GOLDEN["ids"], golden_labels()
    embeddings = STATE["token_emb.word_embeddings.weight"][:K]
    with torch.no_grad():
        if precomputed:
            hooks = module.folded_hooks(switches, module.constants(embeddings))
        else:
            hooks = module.hooks(switches, lambda ctx: module.constants(embeddings))
        ctx = HookContext(ids=ids, labels=labels, token_slice=slice(1, N + 1), branch="main",
                          backbone=SimpleNamespace(layout=SimpleNamespace(mask_id=K)))
        for k in range(BLOCKS):
            got = hooks[f"block_in.{k}"](torch.zeros(len(ids), N + 1, WIDTH), ctx)
            assert (got - GOLDEN["adds"][k]).abs().max() <= 1e-5, k


def test_the_released_head_lands_in_the_head_copy() -> None:
    module = golden_module()
    for key in ("fc.weight", "fc.bias", "ln.weight", "ln.bias", "bias"):
        assert torch.equal(module.head.mlm_layer.state_dict()[key], STATE[f"mlm_layer.{key}"])
    bare = nn.ModuleDict({"fc": nn.Linear(WIDTH, WIDTH), "ln": nn.LayerNorm(WIDTH)})  # a head that is mlm_layer
    bare.register_parameter("bias", nn.Parameter(torch.zeros(1, 1, K + 1)))
    released = {k: v for k, v in STATE.items() if k.startswith("mlm_layer.")}
    assert torch.equal(head_state(bare, released)["fc.weight"], STATE["mlm_layer.fc.weight"])
    with pytest.raises(CheckpointError, match="has no place"):
        head_state(nn.Linear(WIDTH, K), released)


def test_a_graph_layer_of_another_shape_is_refused() -> None:
    adapter = extract_state(SPECS[ADAPTER], STATE)
    adapter = {k: v for k, v in adapter.items() if k != "graph_layer.zero_convs.0.bias"}
    backbone = SimpleNamespace(width=WIDTH, depth=BLOCKS, head=StandInHead())
    with pytest.raises(CheckpointError, match=r"missing \(1\): zero_convs.0.bias"):
        release_module(backbone, adapter, *golden_graphs())


def test_legacy_files_load_unchanged() -> None:
    """The committed Fashion-MNIST models (pre-#18 names) load into today's names, values unchanged."""
    from migbench.backbones.fmnist import fmnist as fmnist_stack
    from migbench.methods.ka_mig import load_module

    from migbench import weights

    old, _ = weights.load_weights("fmnist_ka_mig")
    module = load_module("fmnist_ka_mig", "fmnist_ka_mig_graphs", fmnist_stack().backbone)
    depth, graph = module.graph_layer.depth, module.graph_layer
    for k in range(depth):
        assert torch.equal(graph.positive(k).weight[..., 0], old[f"positive.{k}.weight"].float())
        assert torch.equal(graph.negative(k).bias, old[f"negative.{k}.bias"].float())
    assert torch.equal(graph.co_graph_layer.conv3.lin.weight, old["co_encoder.layers.2.lin.weight"].float())
    assert torch.equal(graph.re_graph_layer.conv1.bias, old["s_encoder.layers.0.bias"].float())
    assert torch.equal(graph.pos_neg_codebook_graph_layer.conv1.weight[..., 0], old["prior.proj.weight"].float())
    assert torch.equal(module.head.weight, old["head.weight"].float())


def golden_uvit() -> nn.Module:
    """Our U-ViT (branch wt-uvit; skipped where it is not merged yet) at the fixture's size (the
    tiny U-ViT at width 32), holding the backbone part of the tiny ``graph_nnet_ema.pth``."""
    mod = pytest.importorskip("migbench.backbones.autonat.uvit")
    backbone = mod.UViT(dataclasses.replace(mod.UViTConfig.tiny(), embed_dim=WIDTH)).eval()
    load_strict(backbone, extract_state(SPECS[BACKBONE], STATE), BACKBONE)
    return backbone


def test_released_adapter_on_our_uvit_matches_upstream_logits() -> None:
    backbone = golden_uvit()
    module = release_module(backbone, extract_state(SPECS[ADAPTER], STATE), *golden_graphs())
    ids, labels = GOLDEN["ids"], golden_labels()
    switches = Switches(negative_positions="all")
    embeddings = backbone.token_embeddings()
    with torch.no_grad():
        assert (backbone(ids, labels).logits - GOLDEN["logits_backbone"]).abs().max() <= 1e-4
        for hooks in (module.folded_hooks(switches, module.constants(embeddings)),
                      module.hooks(switches, lambda ctx: module.constants(embeddings))):
            logits = backbone(ids, labels, module.hook_set(hooks)).logits
            assert (logits - GOLDEN["logits"]).abs().max() <= 1e-4


def test_zero_initialised_adapter_reproduces_our_uvit_exactly() -> None:
    backbone = golden_uvit()
    co, sem, incompatible = golden_graphs()
    module = KAMIGModule(backbone.width, backbone.depth, backbone.head, co, sem, incompatible).eval()
    ids, labels = GOLDEN["ids"], golden_labels()
    embeddings = backbone.token_embeddings()
    with torch.no_grad():
        expected = backbone(ids, labels).logits
        for switches in (Switches(), Switches(negative_positions="all")):
            for hooks in (module.folded_hooks(switches, module.constants(embeddings)),
                          module.hooks(switches, lambda ctx: module.constants(embeddings))):
                assert torch.equal(backbone(ids, labels, module.hook_set(hooks)).logits, expected)


def test_released_files_import_and_load_through_the_method(tmp_path, monkeypatch) -> None:
    """The tiny graph_nnet_ema.pth (torch.save), the graph pickles and G_p, each imported under its
    spec (pins and listings lifted: these are tiny stand-ins), then loaded by weights name as a
    sampler would (``ka_mig.weights=ka_mig_autonat_l``, ``ka_mig.graphs=ka_mig_graph_p``)."""
    from migbench.methods.ka_mig import load_module

    monkeypatch.setenv("MIGBENCH_CHECKPOINTS", str(tmp_path / "cache"))
    torch.save(STATE, tmp_path / "graph_nnet_ema.pth")
    sources = {ADAPTER: tmp_path / "graph_nnet_ema.pth",
               GRAPH_CO: write_pickle(tmp_path / "co.pkl", [GOLDEN["co_edge_index"], GOLDEN["co_edge_weight"]]),
               GRAPH_S: write_pickle(tmp_path / "s.pkl", [GOLDEN["s_edge_index"], GOLDEN["s_edge_weight"]]),
               GRAPH_P: write_pickle(tmp_path / "gp.pkl", GOLDEN["class_pos"])}
    for name, source in sources.items():
        checkpoints.import_file(dataclasses.replace(SPECS[name], sha256="", size=0, listing=""), source)
    backbone = SimpleNamespace(width=WIDTH, depth=BLOCKS, head=StandInHead())
    loaded = load_module(ADAPTER, GRAPH_P, backbone)
    expected = golden_module(backbone.head)
    assert torch.equal(loaded.incompatible, expected.incompatible)
    for (name, a), b in zip(loaded.state_dict().items(), expected.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for graph in ("co", "s"):
        assert all(torch.equal(a, b) for a, b in zip(loaded.edges(graph), expected.edges(graph), strict=True))
