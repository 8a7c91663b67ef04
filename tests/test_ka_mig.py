"""KA-MIG: each graph on hand-made grids, GCN normalisation, online vs precomputed (zero-init fusion: tests/test_contract.py)."""

import math

import pytest
import torch
from migbench.backbones.toy import toy
from migbench.backbones.toy1d import toy1d
from migbench.methods.ka_mig.encoder import GCNConv, NegativePrior
from migbench.methods.ka_mig.fusion import KAMIGModule, Switches
from migbench.methods.ka_mig.graphs import (
    Graph,
    cooccurrence_counts,
    incompatibility,
    js_divergence,
    normalise,
    prune_rows,
    semantic_graph,
)

from migbench.api import NULL_LABEL


def test_cooccurrence_counts_on_a_2x2_grid() -> None:
    grid = torch.tensor([[[0, 1], [1, 2]]])  # every cell neighbours the other three
    assert cooccurrence_counts(grid, 3).tolist() == [[0, 2, 1], [2, 2, 2], [1, 2, 0]]


def test_counts_use_the_8_neighbourhood_in_bounds() -> None:
    grid = torch.zeros(1, 3, 3, dtype=torch.long)
    grid[0, 1, 1] = 1  # centre token sees 8 zeros; each corner zero sees 3 cells, edges 5
    counts = cooccurrence_counts(grid, 2)
    assert counts[1, 0] == 8 and counts[0, 1] == 8
    assert counts[0, 0] == 4 * 2 + 4 * 4  # corners: 2 zero neighbours; edge cells: 4 zero neighbours


def test_prune_keeps_top_ratio_and_drops_diagonal() -> None:
    m = torch.tensor([[9.0, 5.0, 3.0, 1.0], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [4.0, 6.0, 0.0, 7.0]])
    pruned = prune_rows(m, 0.5)
    assert pruned[0].tolist() == [0.0, 5.0, 0.0, 0.0]      # nnz 3 off-diagonal -> int(1.5) = 1
    assert pruned[1].tolist() == [2.0, 0.0, 0.0, 0.0]      # max(1, int(0.5)) = 1
    assert pruned[2].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert pruned[3].tolist() == [0.0, 6.0, 0.0, 0.0]      # diagonal 7 dropped, nnz 2 -> 1


def test_normalisation_uses_unweighted_out_degree() -> None:
    graph = normalise(torch.tensor([[0.0, 6.0, 0.0], [0.0, 0.0, 0.0], [3.0, 3.0, 0.0]]))
    weights = {(int(s), int(t)): float(w) for s, t, w in zip(*graph.edge_index, graph.edge_weight, strict=True)}
    # out-degrees with self loops: node 0: 2, node 1: 1, node 2: 3
    assert weights[(0, 1)] == pytest.approx(6 / math.sqrt(2 * 1))
    assert weights[(2, 0)] == pytest.approx(3 / math.sqrt(3 * 2))
    assert weights[(1, 1)] == pytest.approx(1.0)
    assert weights[(2, 2)] == pytest.approx(1 / 3)


def test_js_and_semantic_top2() -> None:
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    js = js_divergence(p, p)
    # JS([.5,.5],[1,0]) = 0.5 [KL(p||m) + KL(q||m)], m = [.75, .25]
    expected = 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25) + math.log(1 / 0.75))
    assert js[0, 1].item() == pytest.approx(expected) and js[0, 0].item() == pytest.approx(0.0, abs=1e-12)
    # tokens 0 and 1 always at position 0, token 2 at position 1, token 3 at position 2
    ids = torch.tensor([[0, 2, 3], [1, 2, 3], [0, 2, 3]])
    graph = semantic_graph(ids, 4)
    edges = {(int(s), int(t)) for s, t in zip(*graph.edge_index, strict=True) if s != t}
    assert (0, 1) in edges and (1, 0) in edges
    assert sum(1 for s, _ in edges if s == 0) == 2  # exactly two neighbours per token
    w01 = [float(w) for s, t, w in zip(*graph.edge_index, graph.edge_weight, strict=True) if (s, t) == (0, 1)][0]
    assert w01 == pytest.approx(1.0 / 3.0)  # exp(-5 * 0) / sqrt(3 * 3)


def test_incompatibility() -> None:
    ids = torch.tensor([[0, 1], [2, 1], [0, 0]])
    labels = torch.tensor([0, 0, 1])
    never = incompatibility(ids, labels, num_classes=2, num_tokens=3)
    assert never[0, 0].tolist() == [False, True, False]  # class 0, position 0 saw tokens 0 and 2
    assert never[0, 1].tolist() == [True, False, True]
    assert never[1, 1].tolist() == [False, True, True]


def test_gcnconv_matches_hand_computation() -> None:
    conv = GCNConv(1, 1)
    with torch.no_grad():
        conv.lin.weight.fill_(1.0)
        conv.bias.fill_(0.5)
    graph = Graph(torch.tensor([[0], [1]]), torch.tensor([2.0]))  # one edge 0 -> 1, weight 2
    edges = GCNConv.normalised_edges(graph, 2)
    out = conv(torch.tensor([[1.0], [10.0]]), edges)
    # self loops weight 1 added; in-degree: node 0: 1, node 1: 1 + 2 = 3
    assert out[0, 0].item() == pytest.approx(1.0 + 0.5)
    assert out[1, 0].item() == pytest.approx(2 / math.sqrt(1 * 3) * 1.0 + 10.0 / 3 + 0.5)


def make_module(stack, seed=0):
    torch.manual_seed(seed)
    k, n = 16, 64
    co = normalise(torch.rand(k, k))
    sem = normalise((torch.rand(k, k) > 0.8).double())
    incompatible = torch.rand(10, n, k) > 0.5
    backbone = stack.backbone
    return KAMIGModule(backbone.width, backbone.depth, backbone.head, co, sem, incompatible).eval()


def run(stack, module, switches, ids, labels, precomputed=True):
    if precomputed:
        sites = module.folded_hooks(switches, module.constants(stack.backbone.token_embeddings()))
    else:
        sites = module.hooks(switches, lambda ctx: module.constants(ctx.backbone.token_embeddings()))
    return stack.backbone(ids, labels, module.hook_set(sites)).logits


SWITCH_CASES = (Switches(), Switches(semantic=False, incompatibility=False),
                Switches(cooccurrence=False, incompatibility=False), Switches(cooccurrence=False, semantic=False),
                Switches(cooccurrence=False, semantic=False, negative_positions="all"),
                Switches(incompatibility=False, negative_positions="all"))


def trained_like(stack):
    """A module whose projections (weights and biases) are no longer zero."""
    module = make_module(stack)
    with torch.no_grad():
        for layer in [*module.graph_layer.zero_convs, *module.graph_layer.zero_convs_pos]:
            torch.nn.init.normal_(layer.weight, std=0.1)
            torch.nn.init.normal_(layer.bias, std=0.1)
    return module


@pytest.mark.parametrize("fold_prior", [True, False])
def test_online_equals_precomputed(fold_prior, monkeypatch) -> None:
    from migbench.methods.ka_mig import fusion

    if not fold_prior:  # the prior stays one (C, N, d) constant, projected per pass
        monkeypatch.setattr(fusion, "PRIOR_FOLD_LIMIT", 0)
    stack = toy()
    module = trained_like(stack)
    assert module.folds_prior(10, 64) is fold_prior
    ids = torch.randint(0, 16, (3, 64))
    ids[:, :20] = stack.backbone.layout.mask_id
    labels = torch.tensor([3, NULL_LABEL, 7])
    with torch.no_grad():
        for switches in SWITCH_CASES:
            folded = run(stack, module, switches, ids, labels, True)
            torch.testing.assert_close(folded, run(stack, module, switches, ids, labels, False))
            assert not torch.equal(folded, stack.backbone(ids, labels).logits)


def test_placement_of_each_term() -> None:
    from migbench.api import HookContext

    stack = toy()
    module = trained_like(stack)
    ids = torch.randint(0, 16, (2, 64))
    ids[:, :20] = stack.backbone.layout.mask_id
    labels = torch.tensor([3, NULL_LABEL])
    ctx = HookContext(ids=ids, labels=labels, token_slice=slice(1, None), branch="main", backbone=stack.backbone)
    x = torch.zeros(2, 65, 32)

    def delta(switches: Switches) -> torch.Tensor:
        hooks = module.hooks(switches, lambda c: module.constants(stack.backbone.token_embeddings()))
        out = hooks["block_in.0"](x, ctx)
        assert out[:, 0].abs().max() == 0  # the class token gets nothing
        return out[:, 1:]

    with torch.no_grad():
        both = delta(Switches())
        only_positive = delta(Switches(incompatibility=False))
        all_positions = delta(Switches(cooccurrence=False, semantic=False, negative_positions="all"))
    masked = ids == stack.backbone.layout.mask_id
    assert only_positive[masked].abs().max() == 0 and only_positive[~masked].abs().max() > 0
    negative_only = both - only_positive
    assert negative_only[0][~masked[0]].abs().max() == 0 and negative_only[0][masked[0]].abs().max() > 0
    # the null class has P^c = 0, so only g_0's bias is subtracted (as upstream's biased zero conv)
    bias = module.graph_layer.negative(0).bias
    torch.testing.assert_close(negative_only[1][masked[1]], (-bias).expand(int(masked[1].sum()), -1))
    assert negative_only[1][~masked[1]].abs().max() == 0
    assert all_positions[0][~masked[0]].abs().max() > 0


def test_negative_prior_rows_average_incompatible_tokens() -> None:
    incompatible = torch.tensor([[[True, False, True]]])
    weights = NegativePrior.weights(incompatible)
    assert weights.tolist() == [[[0.5, 0.0, 0.5]]]


def test_incompatibility_is_kept_compact_and_edges_move_with_the_module() -> None:
    """No fp32 (C, N, K) weights live on the module (1 GB at ImageNet size): a bool indicator;
    the graphs' normalised edges are buffers (cached on the module's device, not copied per layer)."""
    stack = toy()
    module = make_module(stack)
    assert module.incompatible.dtype == torch.bool and module.incompatible.shape == (10, 64, 16)
    assert all(b.numel() < 10 * 64 * 16 or b.dtype == torch.bool for b in module.buffers())
    derived = {"incompatible", *(f"{g}_{p}" for g in ("co", "s") for p in ("source", "target", "norm"))}
    assert derived <= {name for name, _ in module.named_buffers()} and not derived & set(module.state_dict())
    buffers = {id(b) for b in module.buffers()}
    for graph in ("co", "s"):
        assert all(id(e) in buffers for e in module.edges(graph))
        assert all(e.device.type == "cpu" for e in module.edges(graph, torch.device("cpu")))


def test_constants_are_those_of_the_fp32_weights() -> None:
    """constants() from the bool buffer equals the old precomputed fp32 weights bit for bit."""
    stack = toy()
    torch.manual_seed(0)
    co, sem = normalise(torch.rand(16, 16)), normalise((torch.rand(16, 16) > 0.8).double())
    incompatible = torch.rand(10, 64, 16) > 0.5
    module = KAMIGModule(stack.backbone.width, stack.backbone.depth, stack.backbone.head, co, sem, incompatible)
    embeddings = stack.backbone.token_embeddings().detach()
    with torch.no_grad():
        got = module.constants(embeddings)
        expected = (module.graph_layer.co_graph_layer(embeddings, GCNConv.normalised_edges(co, 16)),
                    module.graph_layer.re_graph_layer(embeddings, GCNConv.normalised_edges(sem, 16)),
                    module.graph_layer.pos_neg_codebook_graph_layer(NegativePrior.weights(incompatible), embeddings))
        on_cpu = module.constants(embeddings, aggregate_on=torch.device("cpu"))
    for a, b, c in zip(got, expected, on_cpu, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("token_slice,length", [(slice(1, None), 65), (slice(0, 64), 65), (slice(0, 64), 64)])
def test_padded_delta_adds_like_the_slice_assignment(token_slice, length) -> None:
    """x + padded delta is x[:, image] + delta bit for bit at the image rows and x elsewhere."""
    from migbench.methods.ka_mig.fusion import _pad_to_sequence

    x = torch.randn(3, length, 8)
    x[:, 64:] = -0.0  # a -0.0 outside the image rows becomes +0.0: equal, and equal downstream
    x[:, :1, :4] = -0.0
    delta = torch.randn(3, 64, 8)
    old = x.clone()
    old[:, token_slice] = old[:, token_slice] + delta
    new = x + _pad_to_sequence(delta, token_slice, length)
    assert torch.equal(new[:, token_slice].view(torch.int32), old[:, token_slice].view(torch.int32))
    assert torch.equal(new, old)


def test_fused_logits_are_bit_identical_to_the_slice_assignment(monkeypatch) -> None:
    """Logits of the folded and online paths with the padded add equal those of the old
    clone-and-assign fusion (copied here), bit for bit, for every switch combination."""
    from migbench.methods.ka_mig import fusion

    def clone_and_assign(index, switches, terms):
        def fuse(x, ctx):
            delta = fusion._delta(terms(index, ctx), ctx.masked, switches)
            if delta is None:
                return x
            x = x.clone()
            x[:, ctx.token_slice] = x[:, ctx.token_slice] + delta.to(x.dtype)
            return x
        return fuse

    stack = toy()
    module = trained_like(stack)
    ids = torch.randint(0, 16, (3, 64))
    ids[:, :20] = stack.backbone.layout.mask_id
    labels = torch.tensor([3, NULL_LABEL, 7])
    cases = [(switches, folded) for switches in SWITCH_CASES for folded in (True, False)]
    with torch.no_grad():
        new = [run(stack, module, switches, ids, labels, folded) for switches, folded in cases]
        monkeypatch.setattr(fusion.KAMIGModule, "_fusion", staticmethod(clone_and_assign))
        old = [run(stack, module, switches, ids, labels, folded) for switches, folded in cases]
    for a, b in zip(new, old, strict=True):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fold_is_deterministic_and_close_to_the_cpu_fold() -> None:
    """Folding on CUDA (dense products there, scatter-adds on the CPU) gives bit-identical tables
    every time, close to the CPU fold; the module, its edges included, ends on the device."""
    stack = toy()
    module = trained_like(stack)
    embeddings = stack.backbone.token_embeddings()
    ids = torch.randint(0, 16, (3, 64))
    ids[:, :20] = stack.backbone.layout.mask_id
    labels = torch.tensor([3, NULL_LABEL, 7])

    def logits(device: str) -> torch.Tensor:
        hooks = module.hook_set(module.fold(Switches(), embeddings, torch.device(device)))
        backbone = stack.backbone.to(device)
        with torch.no_grad():
            return backbone(ids.to(device), labels.to(device), hooks).logits.cpu()

    on_cpu = logits("cpu")
    first, second = logits("cuda"), logits("cuda")
    assert all(e.is_cuda for graph in ("co", "s") for e in module.edges(graph))
    assert torch.equal(first, second)
    torch.testing.assert_close(first, on_cpu, rtol=1e-4, atol=1e-4)


def test_one_graph_trainings_switch_the_other_graphs_off() -> None:
    from migbench.methods.ka_mig.train import KAMIGTraining

    assert KAMIGTraining().switches() == Switches()
    assert KAMIGTraining(only="semantic").switches() == Switches(cooccurrence=False, semantic=True,
                                                                 incompatibility=False)
    assert KAMIGTraining(only="head").switches() == Switches(False, False, False)
    with pytest.raises(ValueError, match=r"KAMIGTraining.only = 'co'; choose from \['', 'cooccurrence', "
                                         r"'semantic', 'incompatibility', 'head'\]"):
        KAMIGTraining(only="co")
    with pytest.raises(ValueError, match="lr must be positive, got -0.1"):
        KAMIGTraining(lr=-0.1)
    with pytest.raises(ValueError, match="graphs_only builds the shared graphs; it takes no only"):
        KAMIGTraining(graphs_only=True, only="semantic")


def test_auto_training_names_follow_the_stack_with_the_old_suffixes() -> None:
    """On fmnist the names are those of the committed weights; a given name is kept as it is."""
    from migbench.methods.ka_mig.train import KAMIGTraining

    def names(stack_name: str, **knobs) -> tuple[str, str]:
        named = KAMIGTraining(**knobs).named(stack_name)
        return named.name, named.graphs

    assert names("fmnist") == ("fmnist_ka_mig", "fmnist_ka_mig_graphs")
    assert names("fmnist", only="head") == ("fmnist_ka_mig_head", "fmnist_ka_mig_graphs")
    assert names("fmnist", only="incompatibility", lr=1e-3) == ("fmnist_ka_mig_incompatibility_lr0.001",
                                                                "fmnist_ka_mig_graphs")
    assert names("toy", lr=1e-4) == ("toy_ka_mig", "toy_ka_mig_graphs")
    assert names("toy", name="mine", graphs="shared") == ("mine", "shared")


def test_manifest_entries_are_read_under_both_keys_and_matched_to_their_stack() -> None:
    from migbench.methods.ka_mig.train import fitted_to, recorded_training

    stack = toy()
    old = {"config": {"recipe": {"only": "semantic"}, "backbone_sha256": "seed0"}}
    new = {"config": {"training": {"only": "head"}, "stack": "toy", "weight_hashes": {"toy": "seed0"}}}
    assert recorded_training(old) == {"only": "semantic"} and recorded_training(new) == {"only": "head"}
    assert recorded_training({}) == {}
    assert fitted_to(old, stack) and fitted_to(new, stack)
    assert not fitted_to({"config": {"weight_hashes": {"toy": "seed1"}}}, stack)
    assert not fitted_to({"config": {"backbone_sha256": "other"}}, stack)


def test_committed_entries_belong_to_the_fmnist_stack_only() -> None:
    """fmnist's weight hashes match the committed models' backbone_sha256; fmnist_emigm's do not."""
    from migbench.methods.ka_mig.train import fitted_to

    from migbench import weights

    manifest = weights.read_manifest()
    hashes = {n: manifest[n]["sha256"] for n in ("fmnist_vq", "fmnist_maskgit", "fmnist_emigm")}
    stack, emigm = toy(), toy()
    stack.weight_hashes = {n: hashes[n] for n in ("fmnist_vq", "fmnist_maskgit")}
    emigm.weight_hashes = {n: hashes[n] for n in ("fmnist_vq", "fmnist_emigm")}
    models = [entry for entry in manifest.values() if entry["config"].get("model", {}).get("kind") == "ka_mig"]
    assert len(models) >= 6
    assert all(fitted_to(entry, stack) and not fitted_to(entry, emigm) for entry in models)


def test_one_graph_model_refuses_the_graphs_it_was_not_trained_with(monkeypatch) -> None:
    from migbench.methods import ka_mig

    from migbench import weights
    from migbench.recipe import build_sampler, resolve

    named = {"ka_mig.weights": "one_graph", "ka_mig.graphs": "g"}
    entry = {"sha256": "0" * 64, "config": {"recipe": {"only": "semantic"}}}  # an entry of the old key
    monkeypatch.setattr(weights, "read_manifest", lambda: {"one_graph": entry})
    monkeypatch.setattr(ka_mig, "load_module", lambda *args: pytest.fail("loaded before the check"))
    with pytest.raises(ValueError, match="trained with semantic only; switch off cooccurrence, incompatibility"):
        build_sampler(resolve("ka_mig", named), toy())
    with pytest.raises(ValueError, match=r"trained with semantic only; switch it on \(--set ka_mig.semantic=true\)"):
        build_sampler(resolve("ka_mig", {**named, "ka_mig.cooccurrence": False, "ka_mig.semantic": False,
                                         "ka_mig.incompatibility": False}), toy())
    entry["config"] = {"training": {"only": "head"}}  # a new entry
    with pytest.raises(ValueError, match="trained with no graphs .the head-only control.; switch off cooccurrence, "
                                         "semantic, incompatibility .--set ka_mig.cooccurrence=false --set "
                                         "ka_mig.semantic=false --set ka_mig.incompatibility=false."):
        build_sampler(resolve("ka_mig", named), toy())
    stack = toy()
    monkeypatch.setattr(ka_mig, "load_module", lambda *args: make_module(stack))
    sampler = build_sampler(resolve("ka_mig", {**named, "ka_mig.cooccurrence": False, "ka_mig.semantic": False,
                                               "ka_mig.incompatibility": False}), stack)
    module = make_module(stack)
    assert sampler.extra_parameters["ka_mig"]["online"] == sum(p.numel() for p in module.head.parameters())


def test_auto_weights_resolve_per_stack(monkeypatch) -> None:
    """fmnist names its committed weights (the resolved recipe is that of the old defaults); a
    stack naming none is refused at install, and only when KA-MIG really installs."""
    from dataclasses import replace

    from migbench.backbones.fmnist import METHOD_WEIGHTS

    from migbench.recipe import build_sampler, resolve

    named = replace(toy(), method_weights=METHOD_WEIGHTS)
    bound = resolve("ka_mig").bind(named).config("ka_mig")
    assert (bound.weights, bound.graphs) == ("fmnist_ka_mig", "fmnist_ka_mig_graphs")
    with pytest.raises(ValueError, match="ka_mig.weights=auto: stack toy has no ka_mig weights; set "
                                         "ka_mig.weights=NAME"):
        build_sampler(resolve("ka_mig"), toy())
    with pytest.raises(ValueError, match="ka_mig.graphs=auto: stack toy has no ka_mig weights"):
        build_sampler(resolve("ka_mig", {"ka_mig.weights": "fmnist_ka_mig"}), toy())
    build_sampler(resolve("ka_mig", neutral=["ka_mig"]), toy())


def test_ka_mig_with_every_graph_runs_on_1d_tokens(monkeypatch) -> None:
    from migbench.methods import ka_mig

    from migbench.recipe import build_sampler, resolve

    stack = toy1d()
    monkeypatch.setattr(ka_mig, "load_module", lambda name, graphs, backbone: ka_mig.KAMIG.random_parts(stack))
    sampler = build_sampler(resolve("ka_mig", {"ka_mig.weights": "w", "ka_mig.graphs": "g"}), stack)
    ids = sampler(torch.tensor([1, 2]), torch.Generator().manual_seed(0))
    assert ids.shape == (2, 16) and not (ids == stack.backbone.layout.mask_id).any()


def test_sequence_cooccurrence_by_hand() -> None:
    """Sequence (0, 1, 2, 1) with K = 3, window 1: pairs (0,1) (1,0) (1,2) (2,1) (2,1) (1,2);
    window 2 adds (0,2) (2,0) (1,1) (1,1)."""
    from migbench.methods.ka_mig.graphs import sequence_cooccurrence_counts

    seq = torch.tensor([[0, 1, 2, 1]])
    assert sequence_cooccurrence_counts(seq, 3, 1).tolist() == [[0, 1, 0], [1, 0, 2], [0, 2, 0]]
    assert sequence_cooccurrence_counts(seq, 3, 2).tolist() == [[0, 1, 1], [1, 2, 2], [1, 2, 0]]
    many = torch.randint(0, 5, (300, 9))
    counts = sequence_cooccurrence_counts(many, 5, 2)
    assert torch.equal(counts, counts.t()) and int(counts.sum()) == 300 * 2 * (8 + 7)


def test_1d_graphs_link_sequence_neighbours() -> None:
    from migbench.methods.ka_mig.graphs import cooccurrence_graph, graph_tensors, graphs_from_state

    ids, labels = torch.randint(0, 16, (20, 64)), torch.arange(20) % 10
    flat = graph_tensors(ids, labels, 16, 10, (64,), 0.05)
    grid = graph_tensors(ids, labels, 16, 10, (8, 8), 0.05)
    assert flat["co_edge_weight"].numel() > 0 and grid["co_edge_weight"].numel() > 0
    assert not torch.equal(flat["co_edge_weight"], grid["co_edge_weight"])
    wide = cooccurrence_graph(ids, 16, 0.05, window=3)
    assert torch.equal(graph_tensors(ids, labels, 16, 10, (64,), 0.05, window=3)["co_edge_weight"], wide.edge_weight)
    for key in ("s_edge_index", "s_edge_weight", "incompatible"):
        assert torch.equal(flat[key], grid[key])
    co, _, incompatible = graphs_from_state(flat)
    assert co.edge_index.dtype == torch.int64 and incompatible.dtype == torch.bool


def test_random_parts_fit_the_stack_and_change_the_logits() -> None:
    from migbench.methods.ka_mig import KAMIG

    stack = toy()
    state = torch.random.get_rng_state()
    parts, again = KAMIG.random_parts(stack), KAMIG.random_parts(stack)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global stream is left alone
    assert not parts.training and not any(p.requires_grad for p in parts.parameters())
    assert parts.incompatible.shape == (10, 64, 16) and parts.graph_layer.depth == stack.backbone.depth
    assert all(torch.equal(a, b) for a, b in zip(parts.state_dict().values(), again.state_dict().values(),
                                                  strict=True))
    assert not torch.equal(parts.graph_layer.zero_convs[0].weight,
                           KAMIG.random_parts(stack, seed=1).graph_layer.zero_convs[0].weight)
    ids = torch.randint(0, 16, (2, 64))
    ids[:, :20] = stack.backbone.layout.mask_id
    labels = torch.tensor([3, NULL_LABEL])
    with torch.no_grad():
        assert not torch.equal(run(stack, parts, Switches(), ids, labels), stack.backbone(ids, labels).logits)


def test_fit_on_1d_tokens_builds_every_graph(tmp_path, monkeypatch) -> None:
    """A stack of 1-D tokens: the graphs (G_co over sequence neighbours, recorded as such) are
    built and a model of all three fits, recorded with the stack."""
    from dataclasses import replace

    from migbench.methods.ka_mig import KAMIG
    from migbench.methods.ka_mig.train import KAMIGTraining

    from migbench import weights

    monkeypatch.setenv("MIGBENCH_WEIGHTS", str(tmp_path / "weights"))
    maps = {"train": (torch.randint(0, 16, (16, 16)), torch.arange(16) % 10),
            "test": (torch.randint(0, 16, (8, 16)), torch.arange(8) % 10)}
    stack = replace(toy1d(), dataset=replace(toy1d().dataset, token_maps=lambda split, device="cpu": maps[split]))
    KAMIG.fit(tmp_path / "run", "test", stack, KAMIGTraining(steps=1, batch_size=8, warmup=1), "fp32")
    manifest = weights.read_manifest()
    assert set(manifest) == {"toy1d_ka_mig_graphs", "toy1d_ka_mig"}
    graphs = manifest["toy1d_ka_mig_graphs"]
    assert graphs["metrics"]["co_edges"] > 0 and graphs["config"]["model"]["cooccurrence"] == "sequence offsets 1..2"
    entry = manifest["toy1d_ka_mig"]["config"]
    assert entry["training"]["sequence_window"] == 2 and entry["training"]["name"] == "toy1d_ka_mig"
    assert entry["stack"] == "toy1d" and entry["weight_hashes"] == {"toy1d": "seed0"}
    with pytest.raises(ValueError, match=r"^fit ka_mig.sequence_window must be >= 1, got 0$"):
        KAMIGTraining(sequence_window=0)


def test_training_needs_token_maps() -> None:
    from migbench.training import stack_token_maps

    with pytest.raises(ValueError, match="fit ka_mig: stack toy has no token maps"):
        stack_token_maps(toy(), "train", "cpu", "fit ka_mig")


def test_with_every_graph_off_only_the_head_copy_runs() -> None:
    stack = toy()
    module = trained_like(stack)
    off = Switches(False, False, False)
    assert module.hooks(off, lambda ctx: pytest.fail("graphs computed")) == {}
    assert module.folded_hooks(off, module.constants(stack.backbone.token_embeddings())) == {}
    ids = torch.randint(0, 16, (2, 64))
    labels = torch.tensor([1, NULL_LABEL])
    with torch.no_grad():  # the head copy is still the backbone's head
        torch.testing.assert_close(run(stack, module, off, ids, labels, False), stack.backbone(ids, labels).logits)


def test_online_parameters_count_what_the_graphs_switched_on_use() -> None:
    module = make_module(toy())

    def count(*parts):
        return sum(p.numel() for part in parts for p in part.parameters())

    assert module.online_parameters(Switches()) == count(module)
    assert module.online_parameters(Switches(False, False, False)) == count(module.head)
    assert module.online_parameters(Switches(cooccurrence=False, incompatibility=False)) == count(
        module.head, module.graph_layer.re_graph_layer, module.graph_layer.zero_convs)
    assert module.online_parameters(Switches(cooccurrence=False, semantic=False)) == count(
        module.head, module.graph_layer.pos_neg_codebook_graph_layer, module.graph_layer.zero_convs_pos)


def test_folded_sizes_count_the_tables_of_the_graphs_switched_on() -> None:
    stack = toy()
    module = make_module(stack)
    k, width, depth = module.head.out_features, module.head.in_features, module.graph_layer.depth
    online = width * k + k  # the head copy
    assert module.precomputed_sizes(Switches(), 10, 64) == (online, depth * (k + 11 * 64) * width)
    assert module.precomputed_sizes(Switches(cooccurrence=False, incompatibility=False), 10, 64) == (
        online, depth * k * width)
    assert module.precomputed_sizes(Switches(cooccurrence=False, semantic=False), 10, 64) == (
        online, depth * 11 * 64 * width)


def test_a_prior_too_large_to_fold_stays_one_constant_projected_per_pass(monkeypatch) -> None:
    from migbench.methods.ka_mig import fusion

    stack = toy()
    module = make_module(stack)
    k, width, depth = module.head.out_features, module.head.in_features, module.graph_layer.depth
    assert fusion.PRIOR_FOLD_LIMIT == 2**26 and module.folds_prior(10, 64)
    monkeypatch.setattr(fusion, "PRIOR_FOLD_LIMIT", depth * 11 * 64 * width - 1)
    assert not module.folds_prior(10, 64)
    projections = depth * (width * width + width)
    assert module.precomputed_sizes(Switches(), 10, 64) == (width * k + k + projections,
                                                            depth * k * width + 10 * 64 * width)


def test_incompatible_mass_and_biased_loss_by_hand() -> None:
    from migbench.methods.ka_mig.diagnostics import biased_loss_sum, incompatible_mass

    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # softmax (1/4, 3/4) and (1/2, 1/2)
    ruled_out = torch.tensor([[False, True], [True, True]])
    assert torch.allclose(incompatible_mass(logits, ruled_out), torch.tensor([0.75, 1.0]))
    # lowering token 1 by ln 3 in row 0 gives (1/2, 1/2); row 1 is shifted uniformly, so unchanged
    total = biased_loss_sum(logits, torch.tensor([0, 1]), ruled_out, math.log(3.0))
    assert total == pytest.approx(2 * math.log(2.0))


def test_diagnose_refuses_an_empty_map_count_and_a_stack_without_models() -> None:
    from migbench.methods.ka_mig.diagnostics import diagnose

    from migbench.weights import WeightsError

    with pytest.raises(ValueError, match="maps must be at least 1, got 0"):
        diagnose(toy(), maps=0)
    with pytest.raises(WeightsError, match="no KA-MIG model fitted to stack toy in the manifest; "
                                           "run `migbench fit ka_mig --backbone toy`"):
        diagnose(toy(), maps=1)


def test_paper_semantic_definition_is_counts_over_their_sum() -> None:
    from migbench.methods.ka_mig.graphs import position_distributions

    hist = torch.tensor([[1.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    paper = position_distributions(hist, "paper")
    assert paper.tolist() == [[0.25, 0.75, 0.0, 0.0], [0.25] * 4, [0.25] * 4]  # unseen token: uniform
    notebook = position_distributions(hist)
    assert torch.allclose(notebook[0], torch.tensor([1 / 3, 1.0, 0.0, 0.0], dtype=torch.float64).softmax(0))
    ids = torch.randint(0, 8, (40, 6), generator=torch.Generator().manual_seed(0))
    assert semantic_graph(ids, 8, definition="notebook").edge_index.shape == semantic_graph(ids, 8).edge_index.shape
    with pytest.raises(ValueError, match="definition must be one of notebook, paper, got 'other'"):
        position_distributions(hist, "other")


def test_beta_masks_follow_upstreams_rule() -> None:
    from migbench.methods.ka_mig.train import beta_mask

    masks = beta_mask(4000, 16, 12, 3, torch.Generator().manual_seed(0))
    counts = masks.sum(1).float()
    assert counts.min() >= 1 and counts.max() <= 16
    assert abs(counts.mean() / 16 - 12 / 15) < 0.01  # Beta(12, 3) has mean 0.8
    again = beta_mask(4000, 16, 12, 3, torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)


def test_ema_is_upstreams_average_and_the_defaults_keep_todays_fit() -> None:
    from migbench.methods.ka_mig.train import KAMIGTraining, _WithEMA

    defaults = KAMIGTraining()
    assert (defaults.mask_ratios, defaults.ema, defaults.semantic) == ("cosine", 0.0, "notebook")
    with pytest.raises(ValueError, match=r"ema must lie in \[0, 1\), got 1.0"):
        KAMIGTraining(ema=1.0)
    module = make_module(toy())
    start = module.graph_layer.zero_convs[0].weight.detach().clone()
    wrapped = _WithEMA(module, 0.9)
    with torch.no_grad():
        module.graph_layer.zero_convs[0].weight.fill_(1.0)
    wrapped.update()  # 0.9 start + 0.1 one
    averaged = wrapped.averaged()  # once more: 0.81 start + 0.19 one
    assert averaged is module
    assert torch.allclose(module.graph_layer.zero_convs[0].weight, 0.81 * start + 0.19)


def test_fit_with_upstreams_recipe_runs_and_records_it(tmp_path, monkeypatch) -> None:
    from dataclasses import replace

    from migbench.methods.ka_mig import KAMIG
    from migbench.methods.ka_mig.train import KAMIGTraining

    from migbench import weights

    monkeypatch.setenv("MIGBENCH_WEIGHTS", str(tmp_path / "weights"))
    maps = {"train": (torch.randint(0, 16, (16, 16)), torch.arange(16) % 10),
            "test": (torch.randint(0, 16, (8, 16)), torch.arange(8) % 10)}
    stack = replace(toy1d(), dataset=replace(toy1d().dataset, token_maps=lambda split, device="cpu": maps[split]))
    training = KAMIGTraining(steps=2, batch_size=8, warmup=1, only="semantic", mask_ratios="beta", ema=0.5,
                             semantic="paper")
    KAMIG.fit(tmp_path / "run", "test", stack, training, "fp32")
    manifest = weights.read_manifest()
    recorded = manifest["toy1d_ka_mig_semantic"]["config"]["training"]
    assert (recorded["mask_ratios"], recorded["ema"], recorded["semantic"]) == ("beta", 0.5, "paper")
    assert manifest["toy1d_ka_mig_graphs"]["config"]["model"]["semantic"] == "paper"
    state, _ = weights.load_weights("toy1d_ka_mig_semantic")
    assert "graph_layer.zero_convs.0.weight" in state and state["graph_layer.zero_convs.0.weight"].dim() == 3


def test_legacy_upgrade_maps_names_and_leaves_todays_layout_alone() -> None:
    from migbench.methods.ka_mig.fusion import upgrade_legacy_state

    w = torch.randn(4, 4)
    old = {"positive.0.weight": w, "negative.2.bias": torch.ones(4), "co_encoder.layers.1.bias": torch.zeros(4),
           "s_encoder.layers.2.lin.weight": w, "prior.proj.weight": w, "head.weight": w}
    new = upgrade_legacy_state(old, depth=3)
    assert set(new) == {"graph_layer.zero_convs.2.weight", "graph_layer.zero_convs_pos.0.bias",
                        "graph_layer.co_graph_layer.conv2.bias", "graph_layer.re_graph_layer.conv3.lin.weight",
                        "graph_layer.pos_neg_codebook_graph_layer.conv1.weight", "head.weight"}
    assert new["graph_layer.zero_convs.2.weight"].shape == (4, 4, 1)
    assert new["graph_layer.pos_neg_codebook_graph_layer.conv1.weight"].shape == (4, 4, 1)
    assert new["graph_layer.re_graph_layer.conv3.lin.weight"].shape == (4, 4)
    assert upgrade_legacy_state(new, depth=3) is new


def test_random_graphs_are_dense_on_tiny_stacks_and_sparse_above_64_codes() -> None:
    from migbench.methods.ka_mig import RANDOM_NEIGHBOURS, random_graph

    assert random_graph(16).edge_index.shape == (2, 256)
    source = random_graph(300).edge_index[0]
    degree = torch.bincount(source, minlength=300)
    assert RANDOM_NEIGHBOURS == 64 and bool(((degree == 64) | (degree == 65)).all())  # + the self loop
