"""Self-guidance (Hur et al., "Unlocking the Capabilities of Masked Generative Models for Image
Synthesis via Self-Guidance", NeurIPS 2024; official code JiwanHur/UnlockMGM).

A guidance term whose reference branch is the auxiliary pass of the TOAST adapter H_phi
(:mod:`.adapter`): each step the main pass gives l and its last-block states h; the adapter turns
h into top-down signals for a second, all-[MASK] pass, giving l_aux; then

    l_SG = l_aux + (1 + s)(l - l_aux) = (1 + s) l - s l_aux        (paper eq. for guided logits)

which is :func:`migbench.guidance.combine` with scale s. NFE = 2 per step; s = 0 skips the
auxiliary pass (the neutral setting reproduces the baseline exactly). s is constant in the
released code (``guidance_anneal`` is accepted but unused); ``scale_schedule`` offers the CFG
ramps as an option.

The paper's sampler settings live in the base method: softmax temperature 1, high choice
temperature with the open-muse compounding decay, T = 18 (``maskgit.steps=18
maskgit.choice_temperature=25 maskgit.choice_anneal=compound``; Google's linear anneal is
``choice_anneal=linear``). The adapter is trained by ``migbench fit self_guidance`` (:mod:`.train`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from migbench.methods.self_guidance.adapter import AuxiliaryPass, TOASTAdapter, auxiliary_logits

from migbench import weights
from migbench.api import HookSet, Prediction
from migbench.config import check_choices, knob
from migbench.guidance import GuidanceTerm
from migbench.sampler import SamplerBuilder
from migbench.schedules import guidance_scale


@dataclass(frozen=True)
class SelfGuidanceConfig:
    scale: float = knob(1.0, "guidance scale s (paper and released evaluation: 1)")
    scale_schedule: str = knob("constant", "s over steps (released code: constant)",
                               ("constant", "linear", "power-cosine"))
    weights: str = knob("fmnist_self_guidance", "adapter weights (a manifest name)")

    def __post_init__(self) -> None:
        check_choices(self)


def _adapter(entry: dict[str, Any]) -> TOASTAdapter:
    model = entry["config"]["model"]
    return TOASTAdapter(model["num_classes"], model["width"], model["depth"], model["factor"])


def load_adapter(name: str) -> TOASTAdapter:
    """The committed adapter ``name`` (sha256-checked, cached per hash)."""
    return weights.load_module(name, _adapter)


class SelfGuidance:
    """Self-guidance: guided logits against a TOAST-adapted all-[MASK] auxiliary pass."""

    name = "self_guidance"
    config_cls = SelfGuidanceConfig
    trained = True

    @staticmethod
    def neutral_config() -> SelfGuidanceConfig:
        return SelfGuidanceConfig(scale=0.0)

    @staticmethod
    def install(builder: SamplerBuilder, config: SelfGuidanceConfig) -> None:
        if config.scale == 0.0:
            return
        name = SelfGuidance.name
        adapter = load_adapter(config.weights).to(next(builder.backbone.parameters()).device)
        builder.add_parameters(name, online=sum(p.numel() for p in adapter.parameters()))
        aux = AuxiliaryPass(builder.backbone.depth)
        aux.install(lambda site, hook: builder.add_hook(site, hook, name, branches=(name,)))

        def dependent(backbone: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor,
                      main: Prediction, hooks: HookSet) -> torch.Tensor:
            return auxiliary_logits(backbone, adapter, aux, hooks, labels, main.last_block)

        builder.add_guidance(GuidanceTerm(
            name=name, owner=name, dependent=dependent,
            scale_at=lambda info: guidance_scale(config.scale_schedule, config.scale, info.step, info.num_steps)))

    @staticmethod
    def fit(run_dir: Path, command: str, steps: int | None = None, precision: str = "auto") -> None:
        """Train the TOAST adapter; ``precision``: the training autocast (:mod:`migbench.precision`)."""
        from dataclasses import replace

        from migbench.methods.self_guidance.train import AdapterRecipe, train_adapter

        recipe = AdapterRecipe() if steps is None else replace(AdapterRecipe(), steps=steps)
        train_adapter(run_dir, recipe, command=command, precision=precision)
