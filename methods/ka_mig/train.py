"""`migbench fit ka_mig [--graphs-only] [--only GRAPH|head]`: build the graphs, then fine-tune KA-MIG's modules.

``--only GRAPH`` trains a one-graph model (``fmnist_ka_mig_<graph>``) for the paper's ablation,
which trains one model per graph configuration. ``--only head`` trains with every graph switched
off, so only the head copy learns (``fmnist_ka_mig_head``): not in the paper, it is the control
that separates what the graphs add from what the extra fine-tuning of the head adds.

Graphs come from the training split's token maps and are saved (``fmnist_ka_mig_graphs``) with
their content hash in the manifest. Fine-tuning (ka_mig.md section 5): the backbone is frozen;
the GCNs, the negative prior's projection, the zero-initialised per-block projections and the
head copy train with masked-token cross-entropy (label smoothing 0.1), class dropout 0.15,
AdamW lr 1e-4, weight decay 0, betas (0.99, 0.99), linear warm-up then constant. Upstream runs
1500 steps at a global batch of 2400 on AutoNAT-L with Beta(12, 3) mask ratios (AutoNAT's
training distribution); here the steps are scaled to this machine and the mask ratios follow
the backbone's own training schedule (cosine), for the same reason upstream uses AutoNAT's.
Also unlike upstream: no EMA of the trained weights (upstream evaluates an EMA at 0.9999, which
after 1500 steps is still mostly the initial weights) and no embedding dropout (our backbone was
trained without dropout).

Fine-tuning runs on the loop's device (the GPU where there is one) with the frozen backbone moved
there once; its passes run under the same ``precision`` autocast as the trained modules.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from migbench.backbones.fmnist.loading import TOKENIZER, load_transformer, token_maps
from migbench.methods.ka_mig.fusion import GRAPH_SWITCHES, KAMIGModule, Switches
from migbench.methods.ka_mig.graphs import (
    content_hash,
    cooccurrence_graph,
    incompatibility,
    semantic_graph,
)

from migbench import weights
from migbench.api import NULL_LABEL, HookSet, Prediction
from migbench.masking import masked_loss, sample_mask, validation_metrics
from migbench.training import TrainLoop, batch_indices

ONLY_CHOICES = (*GRAPH_SWITCHES, "head")  # `--only`: one graph, or the head-only control


@dataclass(frozen=True)
class KAMIGRecipe:
    name: str = "fmnist_ka_mig"
    graphs: str = "fmnist_ka_mig_graphs"
    backbone: str = "fmnist_maskgit"
    prune_ratio: float = 0.05
    steps: int = 500
    batch_size: int = 256
    lr: float = 1e-4
    warmup: int = 100
    class_dropout: float = 0.15
    label_smoothing: float = 0.1
    seed: int = 0
    only: str = ""  # "" trains with all three graphs; a graph name that graph alone; "head" none

    def __post_init__(self) -> None:
        if self.only not in ("", *ONLY_CHOICES):
            raise ValueError(f"only must be one of {', '.join(ONLY_CHOICES)} (or empty for all three), "
                             f"got {self.only!r}")

    def switches(self) -> Switches:
        """The graphs this recipe trains with (the paper's one-graph ablation rows train one; the
        head-only control none)."""
        if not self.only:
            return Switches()
        return Switches(**{graph: graph == self.only for graph in GRAPH_SWITCHES})


def graph_tensors(ids: torch.Tensor, labels: torch.Tensor, num_tokens: int, num_classes: int,
                  grid: tuple[int, int], prune_ratio: float) -> dict[str, torch.Tensor]:
    """The three graphs of token maps (M, N) as named tensors."""
    co = cooccurrence_graph(ids.view(-1, *grid), num_tokens, prune_ratio)
    sem = semantic_graph(ids, num_tokens)
    return {"co_edge_index": co.edge_index, "co_edge_weight": co.edge_weight,
            "s_edge_index": sem.edge_index, "s_edge_weight": sem.edge_weight,
            "incompatible": incompatibility(ids, labels, num_classes, num_tokens).to(torch.uint8)}


def build_graphs(recipe: KAMIGRecipe, command: str, data_dir: str | None = None) -> dict[str, torch.Tensor]:
    started = time.monotonic()
    backbone = load_transformer(recipe.backbone)
    ids, labels = token_maps("train", TOKENIZER, data_dir)
    side = int(backbone.seq_len ** 0.5)
    tensors = graph_tensors(ids, labels, backbone.layout.codebook_size, backbone.layout.num_classes,
                            (side, side), recipe.prune_ratio)
    weights.save_weights(recipe.graphs, tensors, half=False)
    metrics = {"co_edges": int(tensors["co_edge_weight"].numel()), "s_edges": int(tensors["s_edge_weight"].numel()),
               "incompatible_fraction": round(float(tensors["incompatible"].float().mean()), 4)}
    weights.record(recipe.graphs, command=command, wall_seconds=time.monotonic() - started, metrics=metrics,
                   config={"model": {"kind": "ka_mig_graphs", "prune_ratio": recipe.prune_ratio},
                           "content_sha256": content_hash(tensors),
                           "tokenizer_sha256": weights.manifest_entry(TOKENIZER)["sha256"]})
    return tensors


def train_ka_mig(run_dir: Path, recipe: KAMIGRecipe = KAMIGRecipe(), data_dir: str | None = None,
                 command: str = "migbench fit ka_mig", stop_after: int | None = None,
                 precision: str = "auto") -> KAMIGModule:
    """Fine-tune KA-MIG's modules (building the graphs first if the manifest lacks them), then
    save ``recipe.name`` with its manifest entry."""
    from migbench.methods.ka_mig import graphs_from_state

    started = time.monotonic()
    loop = TrainLoop(name=f"fit {recipe.name}", total_steps=recipe.steps, seed=recipe.seed, run_dir=run_dir,
                     precision=precision, stop_after=stop_after, grad_clip=None,
                     lr_at=lambda s: recipe.lr * min(1.0, (s + 1) / recipe.warmup))
    backbone = load_transformer(recipe.backbone).to(loop.device)
    if recipe.graphs not in weights.read_manifest():
        build_graphs(recipe, command=command + " (graphs)", data_dir=data_dir)
    co, sem, incompatible = graphs_from_state(weights.load_weights(recipe.graphs)[0])
    ids, labels = token_maps("train", TOKENIZER, data_dir, loop.device)

    def fresh() -> KAMIGModule:
        return KAMIGModule(backbone.width, backbone.depth, backbone.head, co, sem, incompatible)

    module = fresh()
    optimizer = torch.optim.AdamW(module.parameters(), lr=recipe.lr, betas=(0.99, 0.99), weight_decay=0.0)

    def hooked(net: KAMIGModule) -> _Hooked:
        switches = recipe.switches()
        constants = net.constants(backbone.token_embeddings()) if switches.any_graph() else None
        return _Hooked(backbone, net.hook_set(net.hooks(switches, lambda ctx: constants)))

    def step_fn(net: torch.nn.Module, step: int, gen: torch.Generator, device: torch.device
                ) -> tuple[torch.Tensor, dict[str, float]]:
        idx = batch_indices(len(ids), recipe.batch_size, recipe.seed, step)
        x, y = ids[idx], labels[idx].clone()
        y[torch.rand(len(y), generator=gen) < recipe.class_dropout] = NULL_LABEL
        mask = sample_mask(len(x), x.shape[1], "cosine", 0.0, gen)
        loss, acc = masked_loss(hooked(net), x.to(device), y.to(device), mask.to(device), recipe.label_smoothing)
        return loss, {"masked_accuracy": float(acc)}

    module = loop.run(module, optimizer, step_fn)
    if loop.stops_early:
        return module

    def measure(net: KAMIGModule) -> dict[str, float]:
        # the backbone's own held-out metric (same fixed masks), so the two are comparable
        return validation_metrics(hooked(net), *token_maps("test", TOKENIZER, data_dir, loop.device),
                                  "cosine", 0.0, loop.precision_used)

    return loop.publish(recipe.name, module, fresh, measure, command=command, started=started,
                        config={"model": {"kind": "ka_mig"}, "recipe": asdict(recipe),
                                "backbone_sha256": weights.manifest_entry(recipe.backbone)["sha256"],
                                "graphs_sha256": weights.manifest_entry(recipe.graphs)["sha256"]})


class _Hooked(torch.nn.Module):
    """The frozen backbone with a fixed hook set, called like the backbone (for masked_loss)."""

    def __init__(self, backbone: torch.nn.Module, hooks: HookSet) -> None:
        super().__init__()
        self.backbone, self.hooks, self.layout = backbone, hooks, backbone.layout

    def forward(self, ids: torch.Tensor, labels: torch.Tensor, branch: str = "train") -> Prediction:
        return self.backbone(ids, labels, self.hooks, branch=branch)
