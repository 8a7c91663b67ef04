"""`migbench fit ka_mig [--backbone STACK] [--set KNOB=VALUE ...]`: build the graphs, then fine-tune
KA-MIG's modules on any stack (:class:`KAMIGTraining` lists the knobs).

``only=GRAPH`` trains a one-graph model (``<stack>_ka_mig_<graph>``) for the paper's ablation,
which trains one model per graph configuration. ``only=head`` trains with every graph switched
off, so only the head copy learns (``<stack>_ka_mig_head``): not in the paper, it is the control
that separates what the graphs add from what the extra fine-tuning of the head adds.
``graphs_only=true`` builds the graphs and trains nothing.

Graphs come from the stack's training token maps (``stack.dataset.token_maps``) laid out as
``stack.tokenizer.token_shape`` and are saved (``<stack>_ka_mig_graphs``) with their content
hash in the manifest; on 1-D tokens G_co pairs tokens at most ``sequence_window`` places apart
(:mod:`.graphs`: our choice, no 1-D graph code was published). Fine-tuning (ka_mig.md section 5): the
stack's backbone is frozen; the GCNs, the negative prior's projection, the zero-initialised
per-block projections and the head copy train with masked-token cross-entropy (label smoothing
0.1), class dropout 0.15, AdamW lr 1e-4, weight decay 0, betas (0.99, 0.99), linear warm-up then
constant. Upstream runs 1500 steps at a global batch of 2400 on AutoNAT-L with Beta(12, 3) mask
ratios (AutoNAT's training distribution); here the steps are scaled to this machine and the mask
ratios default to cosine (the embedded backbone's own training schedule), for the same reason
upstream uses AutoNAT's. Also unlike upstream by default: no EMA of the trained weights (upstream
evaluates an EMA at 0.9999, which after 1500 steps is still mostly the initial weights) and no
embedding dropout (our backbone was trained without dropout). Upstream's recipe, for a GPU user
fine-tuning on AutoNAT-L: ``mask_ratios=beta`` (r ~ Beta(``beta_a``, ``beta_b``) = Beta(12, 3),
round(N r) >= 1 masked tokens, :func:`beta_mask`) and ``ema=0.9999`` (the published weights are
the average, :class:`_WithEMA`); the defaults keep today's fits as they were.

Fine-tuning runs on the loop's device (the GPU where there is one) with the frozen backbone moved
there once; its passes run under the same ``precision`` autocast as the trained modules.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from migbench.methods.ka_mig.fusion import GRAPH_SWITCHES, KAMIGModule, Switches
from migbench.methods.ka_mig.graphs import SEMANTIC_DEFINITIONS, graph_tensors, graphs_from_state

from migbench import weights
from migbench.api import NULL_LABEL, HookSet, Prediction, Stack
from migbench.config import AUTO, check_bounds, check_choices, content_hash, knob
from migbench.masking import masked_loss, sample_mask, validation_metrics
from migbench.training import TrainLoop, batch_indices, stack_token_maps

ONLY_CHOICES = (*GRAPH_SWITCHES, "head")  # `only`: one graph, or the head-only control
PAPER_LR = 1e-4


@dataclass(frozen=True)
class KAMIGTraining:
    """What `migbench fit ka_mig` builds and trains, and how (names resolved per stack: :meth:`named`)."""

    name: str = knob(AUTO, "weights to publish; auto = <stack>_ka_mig, then _<only> and _lr<lr> when set")
    graphs: str = knob(AUTO, "graphs to train with, built first when the manifest lacks them; "
                             "auto = <stack>_ka_mig_graphs")
    graphs_only: bool = knob(False, "build the graphs and train nothing")
    only: str = knob("", "train with one graph, or with none (head: the head-only control); "
                         "empty trains with all three", ("", *ONLY_CHOICES))
    prune_ratio: float = knob(0.05, "G_co keeps this fraction of each row's co-occurrence counts")
    sequence_window: int = knob(2, "G_co on 1-D tokens: pairs at most this many places apart in the sequence "
                                   "(our choice; 2-D grids use KA-MIG's 8-neighbourhood)")
    semantic: str = knob("notebook", "G_s's position distributions: notebook (KA-MIG's code and released graph) "
                                     "or paper (counts / sum)", SEMANTIC_DEFINITIONS)
    steps: int = knob(500, "fine-tuning steps")
    batch_size: int = knob(256, "token maps per step")
    lr: float = knob(PAPER_LR, "AdamW learning rate (the paper's 1e-4; another value probes the budget)")
    warmup: int = knob(100, "linear warm-up steps")
    class_dropout: float = knob(0.15, "fraction of labels replaced by the null class")
    label_smoothing: float = knob(0.1, "label smoothing of the masked-token cross-entropy")
    seed: int = knob(0, "batch order and every per-step draw")
    mask_ratios: str = knob("cosine", "training mask ratios: cosine (the backbone's schedule) or beta "
                                      "(upstream's Beta(beta_a, beta_b))", ("cosine", "beta"))
    beta_a: int = knob(12, "Beta mask ratios' first shape (upstream 12)")
    beta_b: int = knob(3, "Beta mask ratios' second shape (upstream 3)")
    ema: float = knob(0.0, "EMA decay of the published weights; 0 publishes the trained weights (upstream 0.9999)")

    def __post_init__(self) -> None:
        check_choices(self)
        check_bounds(self, "fit ka_mig", positive=("lr",), at_least_one=("beta_a", "beta_b", "sequence_window"))
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"fit ka_mig.ema must lie in [0, 1), got {self.ema}")
        if self.graphs_only and self.only:
            raise ValueError("graphs_only builds the shared graphs; it takes no only")

    def switches(self) -> Switches:
        """The graphs this config trains with."""
        return trained_switches(self.only)

    def named(self, stack_name: str) -> KAMIGTraining:
        """This config with its ``"auto"`` names resolved on stack ``stack_name``: the weights
        ``<stack>_ka_mig`` (+ ``_<only>``, + ``_lr<lr>`` off the paper's lr), the graphs
        ``<stack>_ka_mig_graphs``."""
        name = self.name
        if name == AUTO:
            name = (f"{stack_name}_ka_mig" + (f"_{self.only}" if self.only else "")
                    + (f"_lr{self.lr:g}" if self.lr != PAPER_LR else ""))
        graphs = f"{stack_name}_ka_mig_graphs" if self.graphs == AUTO else self.graphs
        return dataclasses.replace(self, name=name, graphs=graphs)


def trained_switches(only: str) -> Switches:
    """The graphs a model trained with ``only`` uses: all three (``""``), that graph alone (the
    paper's one-graph ablation rows), or none (``"head"``, the head-only control)."""
    if not only:
        return Switches()
    return Switches(**{graph: graph == only for graph in GRAPH_SWITCHES})


def recorded_training(entry: dict[str, Any]) -> dict[str, Any]:
    """The training config of a KA-MIG manifest entry (key ``training``; ``recipe`` in entries
    written before the training configs were renamed)."""
    config = entry.get("config", {})
    return config.get("training", config.get("recipe", {}))


def stack_identity(stack: Stack) -> dict[str, Any]:
    """What a manifest entry records of the stack it was fitted to."""
    return {"stack": stack.name, "weight_hashes": dict(stack.weight_hashes)}


def fitted_to(entry: dict[str, Any], stack: Stack) -> bool:
    """Whether a KA-MIG manifest entry was fitted to ``stack``: the stack weights it recorded
    (only ``backbone_sha256`` in entries before stacks were recorded) are ``stack``'s."""
    config = entry.get("config", {})
    recorded = config.get("weight_hashes") or {"backbone": config.get("backbone_sha256")}
    return set(recorded.values()) <= set(stack.weight_hashes.values())


def build_graphs(stack: Stack, config: KAMIGTraining, command: str) -> dict[str, torch.Tensor]:
    """Build the graphs of ``stack``'s training token maps and save them as ``config.graphs``
    (``"auto"`` resolved) with their manifest entry; returns the tensors."""
    config = config.named(stack.name)
    started = time.monotonic()
    layout, token_shape = stack.backbone.layout, tuple(stack.tokenizer.token_shape)
    ids, labels = stack_token_maps(stack, "train", "cpu", "fit ka_mig")
    tensors = graph_tensors(ids, labels, layout.codebook_size, layout.num_classes, token_shape, config.prune_ratio,
                            config.semantic, config.sequence_window)
    neighbourhood = "8-neighbourhood" if len(token_shape) == 2 else f"sequence offsets 1..{config.sequence_window}"
    weights.save_weights(config.graphs, tensors, half=False)
    metrics = {"co_edges": int(tensors["co_edge_weight"].numel()), "s_edges": int(tensors["s_edge_weight"].numel()),
               "incompatible_fraction": round(int(tensors["incompatible"].count_nonzero()) / tensors["incompatible"].numel(), 4)}
    weights.record(config.graphs, command=command, wall_seconds=time.monotonic() - started, metrics=metrics,
                   config={"model": {"kind": "ka_mig_graphs", "prune_ratio": config.prune_ratio,
                                     "semantic": config.semantic, "token_shape": list(token_shape),
                                     "cooccurrence": neighbourhood},
                           "content_sha256": content_hash(tensors), **stack_identity(stack)})
    return tensors


def train_ka_mig(run_dir: Path, stack: Stack, config: KAMIGTraining, command: str = "migbench fit ka_mig",
                 stop_after: int | None = None, precision: str = "auto") -> KAMIGModule:
    """Fine-tune KA-MIG's modules on ``stack`` (building the graphs first if the manifest lacks
    them), then save ``config.name`` (``"auto"`` resolved) with its manifest entry."""
    config = config.named(stack.name)
    switches = config.switches()
    started = time.monotonic()
    loop = TrainLoop(name=f"fit {config.name}", total_steps=config.steps, seed=config.seed, run_dir=run_dir,
                     precision=precision, stop_after=stop_after, grad_clip=None,
                     lr_at=lambda s: config.lr * min(1.0, (s + 1) / config.warmup))
    backbone = stack.backbone.to(loop.device).eval().requires_grad_(False)
    if config.graphs not in weights.read_manifest():
        build_graphs(stack, config, command=command + " (graphs)")
    co, sem, incompatible = graphs_from_state(weights.load_weights(config.graphs)[0])
    ids, labels = stack_token_maps(stack, "train", loop.device, "fit ka_mig")

    def fresh() -> KAMIGModule:
        return KAMIGModule(backbone.width, backbone.depth, backbone.head, co, sem, incompatible)

    module = fresh()
    optimizer = torch.optim.AdamW(module.parameters(), lr=config.lr, betas=(0.99, 0.99), weight_decay=0.0)
    trained: torch.nn.Module = _WithEMA(module, config.ema) if config.ema else module

    def hooked(net: KAMIGModule) -> _Hooked:
        constants = net.constants(backbone.token_embeddings()) if switches.any_graph() else None
        return _Hooked(backbone, net.hook_set(net.hooks(switches, lambda ctx: constants)))

    def step_fn(net: torch.nn.Module, step: int, gen: torch.Generator, device: torch.device
                ) -> tuple[torch.Tensor, dict[str, float]]:
        if isinstance(net, _WithEMA):
            net.update()  # the average of the weights after step - 1 (the last step's: after the run)
            net = net.net
        idx = batch_indices(len(ids), config.batch_size, config.seed, step)
        x, y = ids[idx], labels[idx].clone()
        y[torch.rand(len(y), generator=gen) < config.class_dropout] = NULL_LABEL
        if config.mask_ratios == "beta":
            mask = beta_mask(len(x), x.shape[1], config.beta_a, config.beta_b, gen)
        else:
            mask = sample_mask(len(x), x.shape[1], "cosine", 0.0, gen)
        loss, acc = masked_loss(hooked(net), x.to(device), y.to(device), mask.to(device), config.label_smoothing)
        return loss, {"masked_accuracy": float(acc)}

    trained = loop.run(trained, optimizer, step_fn)
    module = trained.averaged() if isinstance(trained, _WithEMA) else trained

    def measure(net: KAMIGModule) -> dict[str, float]:
        # the backbone's own held-out metric (same fixed masks), so the two are comparable
        return validation_metrics(hooked(net), *stack_token_maps(stack, "test", loop.device, "fit ka_mig"), "cosine", 0.0,
                                  loop.precision_used)

    return loop.publish(config.name, module, fresh, measure, command=command, started=started,
                        config={"model": {"kind": "ka_mig"}, "training": asdict(config), **stack_identity(stack),
                                "graphs_sha256": weights.manifest_entry(config.graphs)["sha256"]})


def beta_mask(batch: int, num_tokens: int, a: int, b: int, generator: torch.Generator) -> torch.Tensor:
    """(B, N) bool training mask of upstream's ``GraphNATSchedule.sample``: per row r ~ Beta(a, b)
    and round(N r) >= 1 random positions. Beta(a, b) of integer shapes is drawn as the a-th
    smallest of a + b - 1 uniforms (its order-statistic form), so it comes from ``generator``."""
    ratios = torch.rand(batch, a + b - 1, generator=generator).sort(dim=1).values[:, a - 1]
    counts = (num_tokens * ratios).round().clamp(min=1)
    ranks = torch.rand(batch, num_tokens, generator=generator).argsort(dim=1).argsort(dim=1)
    return ranks < counts[:, None]


class _WithEMA(torch.nn.Module):
    """The trained module ``net`` and the exponential moving average of its parameters, upstream's
    ``ema`` (``avg <- decay avg + (1 - decay) p``, started at the initial weights, once per step).
    The average is held in buffers, so it is saved with every fit checkpoint and a resumed fit
    resumes it; the optimiser sees only ``net``'s parameters."""

    def __init__(self, net: KAMIGModule, decay: float) -> None:
        super().__init__()
        self.net, self.decay = net, decay
        for i, (_, p) in enumerate(net.named_parameters()):
            self.register_buffer(f"average_{i}", p.detach().clone())

    @torch.no_grad()
    def update(self) -> None:
        for i, (_, p) in enumerate(self.net.named_parameters()):
            average = getattr(self, f"average_{i}")
            average.mul_(self.decay).add_((1 - self.decay) * p.detach())

    @torch.no_grad()
    def averaged(self) -> KAMIGModule:
        """``net`` holding the average after one last update (the final step's weights)."""
        self.update()
        for i, (_, p) in enumerate(self.net.named_parameters()):
            p.copy_(getattr(self, f"average_{i}"))
        return self.net


class _Hooked(torch.nn.Module):
    """The frozen backbone with a fixed hook set, called like the backbone (for masked_loss)."""

    def __init__(self, backbone: torch.nn.Module, hooks: HookSet) -> None:
        super().__init__()
        self.backbone, self.hooks, self.layout = backbone, hooks, backbone.layout

    def forward(self, ids: torch.Tensor, labels: torch.Tensor, branch: str = "train") -> Prediction:
        return self.backbone(ids, labels, self.hooks, branch=branch)
