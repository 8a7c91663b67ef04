"""KA-MIG (Liang et al., "Improved Masked Image Generation with Knowledge-Augmented Token
Representations", AAAI 2026; official code KA-MIG @0b4ceb1).

Three token knowledge graphs (:mod:`.graphs`: co-occurrence, semantic similarity, class-position
incompatibility) are encoded by two 3-layer GCNs over the frozen backbone's code embeddings and a
negative prior (:mod:`.encoder`), and fused into the frozen backbone before every block through
zero-initialised projections (:mod:`.fusion`): positive terms at visible tokens, the negative
prior subtracted at masked positions (the paper; ``negative_positions = "all"`` is the official
code). The graph modules and a copy of the output head are fine-tuned per stack (``migbench fit
ka_mig``, :mod:`.train`); the ``weights`` and ``graphs`` knobs default to ``"auto"``, the stack's
own (``stack.method_weights``). KA-MIG's released AutoNAT-L adapter loads through the same
knobs (:mod:`.release`): ``weights = ka_mig_autonat_l`` (imported with ``migbench import``) with
``graphs`` naming the class-position graph (``ka_mig_graph_p``, the imported G_p, or a graphs
file of ours); G_co and G_s are then the released ones. On 1-D tokens (TiTok) G_co links sequence
neighbours (:mod:`.graphs`, our documented choice), so KA-MIG runs on every family. At
inference C_co, C_s and P^c are constants: ``precompute = true`` (the default) folds them with
every block's projections into lookup tables once (one step past the paper, which caches the
features and projects them per pass; a prior too large to fold per block stays the paper's way),
so a pass only gathers rows and runs the head; ``precompute = false`` recomputes the graphs and
projections in every pass (same logits up to rounding; on GPU its scatter-add is not
bit-deterministic). Folding runs its dense products on the sampling device (the scatter-adds
stay on the CPU): CPU samples are those of version 2 bit for bit, while GPU samples changed with
it (no GPU rows were ever recorded, so the version stays 2).

Neutral setting: ``enabled = false`` (the trained head differs from the backbone's, so switching
graphs off alone is not the baseline; zero-initialised fusion is, and is tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from migbench.methods.ka_mig.fusion import GRAPH_SWITCHES, KAMIGModule, Switches
from migbench.methods.ka_mig.graphs import Graph, graphs_from_state, normalise
from migbench.methods.ka_mig.release import ADAPTER, load_release
from migbench.methods.ka_mig.train import KAMIGTraining, recorded_training

from migbench import weights
from migbench.api import HookContext, Stack
from migbench.config import AUTO, RANDOM_PARTS, check_choices, knob
from migbench.sampler import SamplerBuilder

if TYPE_CHECKING:
    from migbench.methods.ka_mig.diagnostics import Diagnosis


RELEASED = (ADAPTER,)  # weights names read from the checkpoint cache (KA-MIG's released adapter)


@dataclass(frozen=True)
class KAMIGConfig:
    cooccurrence: bool = knob(True, "use the co-occurrence graph G_co (8-neighbours on a 2-D grid, sequence "
                                    "neighbours on 1-D tokens)")
    semantic: bool = knob(True, "use the semantic-similarity graph G_s")
    incompatibility: bool = knob(True, "subtract the class-position incompatibility prior P^c")
    negative_positions: str = knob("masked", "where P^c is subtracted: masked (paper) or all (official code)",
                                   ("masked", "all"))
    precompute: bool = knob(True, "fold C_co, C_s, P^c and the projections into lookup tables once "
                                  "(same logits as online up to rounding)")
    weights: str = knob(AUTO, "fine-tuned KA-MIG module (a manifest name, or ka_mig_autonat_l: the released "
                              "adapter, imported; random: seeded random parts); auto = the stack's")
    graphs: str = knob(AUTO, "the three graphs (a manifest name; with the released adapter the class-position "
                             "graph alone: ka_mig_graph_p or a manifest name); auto = the stack's")
    enabled: bool = knob(True, "false installs nothing (the neutral setting)")

    def __post_init__(self) -> None:
        check_choices(self)

    def switches(self) -> Switches:
        return Switches(self.cooccurrence, self.semantic, self.incompatibility, self.negative_positions)


def load_module(name: str, graphs: str, backbone: torch.nn.Module) -> KAMIGModule:
    """The committed KA-MIG module ``name`` with the graphs ``graphs`` for ``backbone`` (whose head
    it copies), sha256-checked and cached per weights, graphs and backbone; KA-MIG's released
    adapter (``name`` one of :data:`RELEASED`) is read from the checkpoint cache, uncached
    (:func:`.release.load_release`)."""
    if name in RELEASED:
        return load_release(backbone, graphs, name)

    def build(entry: dict[str, Any]) -> KAMIGModule:
        co, sem, incompatible = graphs_from_state(weights.load_weights(graphs)[0])
        return KAMIGModule(backbone.width, backbone.depth, backbone.head, co, sem, incompatible)
    return weights.load_module(name, build, key=(graphs, weights.manifest_entry(graphs)["sha256"], backbone))


def check_trained_graphs(name: str, config: KAMIGConfig) -> None:
    """Refuse switches that differ from those the weights ``name`` were trained with (a one-graph
    ablation model or the head-only control, as its manifest entry records); weights the
    manifest does not list are left to the loader."""
    trained_only = recorded_training(weights.read_manifest().get(name, {})).get("only", "")
    if not trained_only:
        return
    trained_with = "no graphs (the head-only control)" if trained_only == "head" else f"{trained_only} only"
    extra = [g for g in GRAPH_SWITCHES if getattr(config, g) and g != trained_only]
    if extra:
        raise ValueError(f"ka_mig.weights={name!r} was trained with {trained_with}; switch off "
                         f"{', '.join(extra)} ({' '.join(f'--set ka_mig.{g}=false' for g in extra)})")
    if trained_only in GRAPH_SWITCHES and not getattr(config, trained_only):
        raise ValueError(f"ka_mig.weights={name!r} was trained with {trained_with}; "
                         f"switch it on (--set ka_mig.{trained_only}=true)")


RANDOM_NEIGHBOURS = 64
"""Edges per code of a random graph: every code where K <= 64 (the tiny stacks), the 64 largest of
a row's random weights above (a dense graph over TiTok's 4,096 codes would pass 16.7M edges of
width d through the GCN: 51 GB at d = 768)."""


def random_graph(codes: int) -> Graph:
    """A random graph over ``codes`` nodes: uniform weights, each row's :data:`RANDOM_NEIGHBOURS`
    largest kept, normalised like the real graphs (:func:`~.graphs.normalise`)."""
    weights = torch.rand(codes, codes)
    if codes > RANDOM_NEIGHBOURS:
        keep = weights.topk(RANDOM_NEIGHBOURS, dim=1).indices
        weights = torch.zeros_like(weights).scatter_(1, keep, weights.gather(1, keep))
    return normalise(weights)


class KAMIG:
    """KA-MIG: knowledge-graph token representations fused into a frozen backbone."""

    name = "ka_mig"
    config_cls = KAMIGConfig
    fit_config_cls = KAMIGTraining
    trained = True
    version = 2  # 2: the precomputed path folds the block projections into lookup tables

    @staticmethod
    def neutral_config() -> KAMIGConfig:
        return KAMIGConfig(enabled=False)

    @staticmethod
    def install(builder: SamplerBuilder, config: KAMIGConfig) -> None:
        if not config.enabled:
            return
        name = builder.weights_name(KAMIG.name, "weights", config.weights)
        graphs = builder.weights_name(KAMIG.name, "graphs", config.graphs)
        check_trained_graphs(name, config)
        backbone = builder.backbone
        device = next(backbone.parameters()).device
        module = KAMIG.random_parts(builder.stack) if name == RANDOM_PARTS else load_module(name, graphs, backbone)
        layout = backbone.layout
        switches = config.switches()
        if config.precompute:
            # folded once; the scatter-adds on the CPU (CUDA's index_add_ is not deterministic) so
            # every process holds bit-identical tables and samples do not depend on the process count
            hooks = module.fold(switches, backbone.token_embeddings(), device)
            online, precomputed = module.precomputed_sizes(switches, layout.num_classes, backbone.seq_len)
        else:
            online, precomputed = module.online_parameters(switches), 0

            def constants(ctx: HookContext) -> tuple[torch.Tensor, ...]:
                if "ka_mig" not in ctx.extras:  # once per forward, shared by every block's hook
                    ctx.extras["ka_mig"] = module.constants(ctx.backbone.token_embeddings())
                return ctx.extras["ka_mig"]
            hooks = module.to(device).hooks(switches, constants)
        builder.add_parameters(KAMIG.name, online=online, precomputed=precomputed)
        for site, hook in hooks.items():
            builder.add_hook(site, hook, KAMIG.name)
        builder.replace_head(module.head, KAMIG.name)

    @staticmethod
    def random_parts(stack: Stack, seed: int = 0) -> KAMIGModule:
        """A module as :func:`load_module` returns, randomly initialised to fit ``stack``'s
        backbone (for contract tests on random families): random G_co and G_s over the K codes
        (:func:`random_graph`), a random incompatibility indicator (C, N, K), the zero-initialised projections'
        weights drawn with std 0.05 so the fusion changes the logits, and the backbone's head
        copied. In eval mode without gradients; the same seed gives the same parts, and the
        global random state is left as it was."""
        backbone = stack.backbone
        layout = backbone.layout
        k = layout.codebook_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            co, sem = random_graph(k), random_graph(k)
            incompatible = torch.rand(layout.num_classes, backbone.seq_len, k) > 0.5
            module = KAMIGModule(backbone.width, backbone.depth, backbone.head, co, sem, incompatible)
            graph, blocks = module.graph_layer, range(backbone.depth)
            with torch.no_grad():  # drawn in block order (call order), as before upstream's reversed storage
                for layer in [*map(graph.positive, blocks), *map(graph.negative, blocks)]:
                    torch.nn.init.normal_(layer.weight, std=0.05)
        return module.eval().requires_grad_(False)

    @staticmethod
    def diagnose(maps: int = 10_000, stack: str = "fmnist") -> Diagnosis:
        """`migbench diagnose ka_mig`: what the incompatibility prior could give on the first
        ``maps`` held-out token maps of the registered stack ``stack``, and what each KA-MIG
        model fitted to it takes (:mod:`.diagnostics`)."""
        from migbench.methods.ka_mig.diagnostics import diagnose

        from migbench import registry

        return diagnose(registry.backbone(stack)(), maps=maps)

    @staticmethod
    def fit(run_dir: Path, command: str, stack: Stack, config: KAMIGTraining, precision: str) -> None:
        """Build ``stack``'s graphs (``graphs_only``), or fine-tune the module on it
        (:mod:`.train`); ``precision`` is the training autocast (:mod:`migbench.precision`)."""
        from migbench.methods.ka_mig.train import build_graphs, train_ka_mig

        if config.graphs_only:
            build_graphs(stack, config, command=command)
        else:
            train_ka_mig(run_dir, stack, config, command=command, precision=precision)
