"""KA-MIG's released files (KA-MIG @0b4ceb1, its README's links) through our KA-MIG method.

What was released, and how each enters (``migbench import NAME PATH``, checked and converted
once into the checkpoint cache with both sha256s recorded; :data:`CHECKPOINTS`):

- ``graph_nnet_ema.pth`` (Google Drive): the whole fine-tuned ``UViTGraphAdapter`` state dict,
  428 keys = the U-ViT's 314 (``token_emb``, ``context_embed``, ``in_blocks``, ``mid_block``,
  ``out_blocks``, ``norm``, ``mlm_layer``) + the adapter's 114 (``graph_layer.*``, 33,663,744
  parameters). It is imported twice, split by ``ignore``: ``ka_mig_autonat_l`` keeps the
  method's part, ``graph_layer.*`` and the fine-tuned head ``mlm_layer.*`` (119 keys,
  34,256,897 parameters; listing ``backbones/autonat/keys/ka_mig_adapter.json``), and
  ``ka_mig_autonat_l_backbone`` keeps the U-ViT's 314 keys, the backbone KA-MIG's own sampling
  (``generate_npz.py`` loads the whole file) runs under the adapter. Its frozen weights went
  through upstream's EMA (``p <- 0.9999 p + 0.0001 p`` for 1500 steps), so they may differ from
  ``nnet_ema.pth`` in the last bits; its ``mlm_layer`` is the fine-tuned head, so as a stack of
  its own it is not the AutoNAT-L baseline.
- ``graph_prior/codebook_co_occurrence_norm_self_50.pkl`` (in the repository, ``ka_mig_graph_co``)
  and ``codebook_replace_graph_norm_self.pkl`` (``ka_mig_graph_s``): each a ``pickle.dump`` of
  ``[edge_index (2, E) int64, edge_weight (E,)]``, read by a restricted unpickler
  (:func:`migbench.checkpoints.read_tensor_pickle`: tensors only, no code runs) and kept as is
  (``edge_index``, ``edge_weight``). G_co: E = 53,193, float32, per node its top co-occurrence
  counts and a self loop, already normalised (w deg^-1/2 deg^-1/2, unweighted degree); G_s:
  E = 3,072, float64, per node its 2 nearest tokens by JS divergence and a self loop, same
  normalisation. Both become our :class:`~.graphs.Graph` (source, target) with the weights cast
  to float32, as upstream's ``GCN`` casts them to the activations' dtype (:func:`release_graph`).
- ``graph_prior/class_pos_norm_mat_cat.pkl`` (G_p, Google Drive; ``ka_mig_graph_p``): per the
  code a pickled tensor (1000, 256, 1024); not read here (no copy at hand), its form inferred:
  each (class, position) row 1/|I| on the ruled-out codes I. :func:`release_incompatibility`
  turns it into our bool indicator and refuses a row of any other form. Where it is not
  imported, the class-position graph is ours (:func:`~.graphs.incompatibility` over the
  stack's token maps), documented as such.

The module: :func:`load_release` builds a :class:`~.fusion.KAMIGModule` for the backbone and
loads the adapter part strictly: ``graph_layer.*`` by name into ``module.graph_layer``
(upstream's names, reversed ``zero_convs`` index included), ``mlm_layer.*`` into the head copy
(:func:`head_state`). The released weights were trained with the negative prior subtracted at
every position: sample them with ``ka_mig.negative_positions=all``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from migbench.methods.ka_mig.fusion import KAMIGModule
from migbench.methods.ka_mig.graphs import Graph
from torch import nn

from migbench import weights
from migbench.checkpoints import CheckpointError, CheckpointSpec, load_state, load_strict

COMMIT = "0b4ceb150ef64207af65e2c9227c9b256a3ef094"
REPO = "https://github.com/GuotaoLiang/KA-MIG"
LICENCE = "no licence file in GuotaoLiang/KA-MIG (all rights reserved by default): research use, do not redistribute"
ADAPTER, BACKBONE = "ka_mig_autonat_l", "ka_mig_autonat_l_backbone"
GRAPH_CO, GRAPH_S, GRAPH_P = "ka_mig_graph_co", "ka_mig_graph_s", "ka_mig_graph_p"
UVIT_KEYS = ("token_emb.*", "context_embed.*", "in_blocks.*", "mid_block.*", "out_blocks.*", "norm.*")
EDGE_FIELDS = ("edge_index", "edge_weight")

CHECKPOINTS: tuple[CheckpointSpec, ...] = (
    CheckpointSpec(name=ADAPTER, source="https://drive.google.com/file/d/1jBJIappmKaeJ2QB51h8u78Ghpelh5snm",
                   licence=LICENCE, ignore=UVIT_KEYS, listing="migbench.backbones.autonat:keys/ka_mig_adapter.json",
                   manual=f"{REPO}#our-pre-trained-model (save as graph_nnet_ema.pth)"),
    CheckpointSpec(name=BACKBONE, source="https://drive.google.com/file/d/1jBJIappmKaeJ2QB51h8u78Ghpelh5snm",
                   licence=LICENCE, ignore=("graph_layer.*",), listing="migbench.backbones.autonat:keys/uvit.json",
                   manual=f"{REPO}#our-pre-trained-model (save as graph_nnet_ema.pth)"),
    CheckpointSpec(name=GRAPH_CO, source=f"{REPO}/raw/{COMMIT}/graph_prior/codebook_co_occurrence_norm_self_50.pkl",
                   licence=LICENCE, size=1_064_571,
                   sha256="7c53b9423ff8af9d33df7d3928dfb88f9229148b7ce11a603f99461bc236dcf1", fields=EDGE_FIELDS,
                   listing="migbench.backbones.autonat:keys/ka_mig_graph_co.json"),
    CheckpointSpec(name=GRAPH_S, source=f"{REPO}/raw/{COMMIT}/graph_prior/codebook_replace_graph_norm_self.pkl",
                   licence=LICENCE, size=74_429,
                   sha256="76d9148e5d436a94e52341e12899bdf7a348325edc5bba04563651ed8f371561", fields=EDGE_FIELDS,
                   listing="migbench.backbones.autonat:keys/ka_mig_graph_s.json"),
    CheckpointSpec(name=GRAPH_P, source="https://drive.google.com/file/d/15L_DomhWjPrHRAlyw4lpfxWB1Xh7a18-",
                   licence=LICENCE, fields=("class_pos",),
                   manual=f"{REPO}#graph-prior-knowledge (save as class_pos_norm_mat_cat.pkl)"),
)


def release_graph(state: Mapping[str, torch.Tensor]) -> Graph:
    """Our :class:`Graph` of a converted G_co or G_s file: edge_index (2, E) as (source, target)
    int64 (upstream's PyG flow source -> target), edge_weight cast to float32."""
    index, weight = state["edge_index"], state["edge_weight"]
    if index.dim() != 2 or index.shape[0] != 2 or weight.shape != index.shape[1:]:
        raise CheckpointError(f"a graph needs edge_index (2, E) and edge_weight (E,), got "
                              f"{tuple(index.shape)} and {tuple(weight.shape)}")
    return Graph(index.long(), weight.float())


def release_incompatibility(class_pos: torch.Tensor) -> torch.Tensor:
    """Our bool indicator (C, N, K) of upstream's G_p (C, N, K) float: every row must be 0 or
    1/|I| on its nonzero codes I (the form :class:`~.encoder.NegativePrior` rebuilds), else one
    error naming a row that is not."""
    indicator = class_pos != 0
    expected = indicator.float() / indicator.sum(-1, keepdim=True).clamp_min(1)
    bad = ~torch.isclose(class_pos.float(), expected, rtol=1e-5, atol=0).all(-1)
    if bad.any():
        c, i = (int(v) for v in bad.nonzero()[0])
        raise CheckpointError(f"G_p row (class {c}, position {i}) is not 1/|I| on its ruled-out codes: "
                              "our indicator form cannot hold it")
    return indicator


def head_state(head: nn.Module, released: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The head copy's state with the released ``mlm_layer.X`` tensors in: each lands on the head's
    key ``mlm_layer.X`` (a head that holds upstream's ``mlm_layer``) or ``X`` (a head that is
    it); the head's other keys (the tied embedding table, which upstream reads from the frozen
    backbone) keep the backbone's values. Every released key must land, with its shape."""
    state = head.state_dict()
    for key, value in released.items():
        name = key.removeprefix("mlm_layer.")
        target = key if key in state else name
        if target not in state or state[target].shape != value.shape:
            raise CheckpointError(f"the released head key {key} {tuple(value.shape)} has no place in the "
                                  f"backbone's head ({', '.join(sorted(state))})")
        state[target] = value
    return state


def split_adapter(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(``graph_layer`` state without its prefix, ``mlm_layer.*`` head state) of the adapter part;
    any other key is refused."""
    graph = {k.removeprefix("graph_layer."): v for k, v in state.items() if k.startswith("graph_layer.")}
    head = {k: v for k, v in state.items() if k.startswith("mlm_layer.")}
    other = sorted(set(state) - {f"graph_layer.{k}" for k in graph} - set(head))
    if other:
        raise CheckpointError(f"the KA-MIG adapter holds keys beyond graph_layer.* and mlm_layer.*: {', '.join(other[:5])}")
    return graph, head


def release_module(backbone: nn.Module, adapter: Mapping[str, torch.Tensor], co: Graph, sem: Graph,
                   incompatible: torch.Tensor) -> KAMIGModule:
    """A :class:`KAMIGModule` for ``backbone`` holding the adapter part ``adapter``
    (``graph_layer.*`` strictly by upstream's names, ``mlm_layer.*`` into the head copy), over
    G_co, G_s and the indicator (C, N, K); in eval mode with gradients off."""
    graph, head = split_adapter(adapter)
    module = KAMIGModule(backbone.width, backbone.depth, backbone.head, co, sem, incompatible)
    load_strict(module.graph_layer, graph, ADAPTER)
    module.head.load_state_dict(head_state(module.head, head))
    return module.eval().requires_grad_(False)


def incompatibility_source(name: str) -> torch.Tensor:
    """The indicator (C, N, K) bool from ``name``: the imported G_p (:data:`GRAPH_P`) or a
    graphs file of the weights manifest (ours, ``incompatible``)."""
    if name == GRAPH_P:
        return release_incompatibility(load_state(GRAPH_P)[0]["class_pos"])
    return weights.load_weights(name)[0]["incompatible"].bool()


def load_release(backbone: nn.Module, graphs: str, adapter: str = ADAPTER) -> KAMIGModule:
    """KA-MIG's released adapter ``adapter`` (imported) for ``backbone``, over the released G_co
    and G_s (imported) and the class-position graph ``graphs`` (:func:`incompatibility_source`)."""
    co, sem = (release_graph(load_state(name)[0]) for name in (GRAPH_CO, GRAPH_S))
    return release_module(backbone, load_state(adapter)[0], co, sem, incompatibility_source(graphs))
