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
``choice_anneal=linear``). open-muse's sampler, which the released code runs, differs from Google's
in two more ways, both options of the base method: decoded tokens keep a finite confidence and
can be re-masked (``maskgit.decoded_confidence=finite``, fidelity finding F5) and the reveal
counts are computed in float32 (``maskgit.count_precision=float32``, F4). The adapter is trained
by ``migbench fit self_guidance`` (:mod:`.train`; ``substitutes=upstream`` draws the substituted
tokens as the released code does, F6; ``signal_bias=true`` adds the value bias to the signal as
upstream does); the released ImageNet adapter loads through :mod:`.release`
(``self_guidance.weights=unlockmgm_toast_256``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from migbench.methods.self_guidance.adapter import AuxiliaryPass, TOASTAdapter, auxiliary_logits
from migbench.methods.self_guidance.release import RELEASED, load_release
from torch import nn

from migbench import weights
from migbench.api import Backbone, HookSet, Prediction, Stack
from migbench.config import (
    AUTO,
    RANDOM_PARTS,
    check_bounds,
    check_choices,
    check_guidance_scale,
    knob,
)
from migbench.guidance import GuidanceTerm
from migbench.sampler import SamplerBuilder
from migbench.schedules import guidance_scale

SUBSTITUTE_RULES = ("model", "upstream")


@dataclass(frozen=True)
class SelfGuidanceConfig:
    scale: float = knob(1.0, "guidance scale s (paper and released evaluation: 1)")
    scale_schedule: str = knob("constant", "s over steps (released code: constant)",
                               ("constant", "linear", "power-cosine"))
    weights: str = knob(AUTO, "adapter weights (a manifest name, or unlockmgm_toast_256/512: the released "
                              "adapter, imported; auto = the stack's)")

    def __post_init__(self) -> None:
        check_choices(self)
        check_guidance_scale("self_guidance.scale", self.scale)


@dataclass(frozen=True)
class SelfGuidanceTraining:
    """`migbench fit self_guidance` (:mod:`.train`): the adapter's error-correction fine-tuning."""

    name: str = knob(AUTO, "weights name; auto = <stack>_self_guidance")
    steps: int = knob(400, "optimiser steps (upstream: 50k at batch 256 on ImageNet)")
    batch_size: int = knob(128, "token maps per step")
    lr: float = knob(1e-4, "peak AdamW learning rate (upstream 1e-4)")
    warmup: int = knob(40, "linear warm-up steps before the cosine decay")
    label_smoothing: float = knob(0.1, "label smoothing of the correction loss (upstream 0.1)")
    factor: int = knob(16, "slices of the class anchor's factorised token generator (upstream 16)")
    seed: int = knob(0, "seed of the batches and draws")
    substitutes: str = knob(
        "model", "substituted tokens: model (the paper: the frozen model's own samples) or upstream (the "
                 "released code: multinomial(softmax(p)) over probabilities p, nearly uniform codes)",
        SUBSTITUTE_RULES, described_at_default=False)
    signal_bias: bool = knob(False, "second pass adds W_v td + b_v (upstream; true) or W_v td (false)",
                             described_at_default=False)

    def __post_init__(self) -> None:
        check_choices(self)
        check_bounds(self, "fit self_guidance", at_least_one=("steps", "batch_size", "factor"), positive=("lr",),
                     non_negative=("warmup",))
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"fit self_guidance.label_smoothing must lie in [0, 1), got {self.label_smoothing}")


def _adapter(entry: dict[str, Any]) -> TOASTAdapter:
    model = entry["config"]["model"]
    return TOASTAdapter(model["num_classes"], model["width"], model["depth"], model["factor"],
                        signal_bias=model.get("signal_bias", False))


def load_adapter(name: str, backbone: Backbone) -> TOASTAdapter:
    """The committed adapter ``name`` (sha256-checked, cached per hash) on ``backbone``'s device;
    the released one (``name`` one of :data:`.release.RELEASED`) from the checkpoint cache,
    uncached (:func:`.release.load_release`)."""
    if name in RELEASED:
        return load_release(name, backbone.layout.num_classes, backbone.width, backbone.depth).to(_device(backbone))
    return weights.load_module(name, _adapter).to(_device(backbone))


def _device(backbone: Backbone) -> torch.device:
    return next(backbone.parameters()).device


def check_fits(adapter: TOASTAdapter, stack: Stack, name: str) -> None:
    """One line naming ``stack`` when the adapter's depth, width or classes are not its backbone's."""
    backbone = stack.backbone
    have = (adapter.depth, adapter.width, adapter.num_classes)
    need = (backbone.depth, backbone.width, backbone.layout.num_classes)
    if have != need:
        raise ValueError(f"self_guidance.weights={name!r} is an adapter for depth {have[0]}, width {have[1]}, "
                         f"{have[2]} classes; stack {stack.name}'s backbone has depth {need[0]}, width {need[1]}, "
                         f"{need[2]} classes (fit one: migbench fit self_guidance --backbone {stack.name})")


class SelfGuidance:
    """Self-guidance: guided logits against a TOAST-adapted all-[MASK] auxiliary pass."""

    name = "self_guidance"
    config_cls = SelfGuidanceConfig
    fit_config_cls = SelfGuidanceTraining
    trained = True

    @staticmethod
    def neutral_config() -> SelfGuidanceConfig:
        return SelfGuidanceConfig(scale=0.0)

    @staticmethod
    def install(builder: SamplerBuilder, config: SelfGuidanceConfig) -> None:
        if config.scale == 0.0:
            return
        name, stack = SelfGuidance.name, builder.stack
        weights_name = builder.weights_name(name, "weights", config.weights)
        adapter = (SelfGuidance.random_parts(stack) if weights_name == RANDOM_PARTS
                   else load_adapter(weights_name, builder.backbone))
        check_fits(adapter, stack, weights_name)
        builder.add_parameters(name, online=sum(p.numel() for p in adapter.parameters()))
        aux = AuxiliaryPass(builder.backbone.depth, signal_bias=adapter.signal_bias)
        aux.install(lambda site, hook: builder.add_hook(site, hook, name, branches=(name,)))

        def dependent(backbone: nn.Module, ids: torch.Tensor, labels: torch.Tensor,
                      main: Prediction, hooks: HookSet) -> torch.Tensor:
            if main.last_block is None:
                raise ValueError(f"self_guidance reads the last block's states; stack {stack.name}'s backbone "
                                 "returns none (Prediction.last_block)")
            return auxiliary_logits(backbone, adapter, aux, hooks, labels, main.last_block)

        builder.add_guidance(GuidanceTerm(
            name=name, owner=name, dependent=dependent,
            scale_at=lambda info: guidance_scale(config.scale_schedule, config.scale, info.step, info.num_steps)))

    @staticmethod
    def random_parts(stack: Stack, seed: int = 0) -> TOASTAdapter:
        """A random adapter fitting ``stack.backbone`` (on its device, eval, no grad) for tests:
        feedback weights of std 1/sqrt(d), so each td_l is of the order of the selected states
        (the training init's std 0.02 makes it about 0.0004 d times them)."""
        backbone = stack.backbone
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            adapter = TOASTAdapter(backbone.layout.num_classes, backbone.width, backbone.depth, factor=4)
            with torch.no_grad():
                for block in adapter.decoders:
                    for linear in (block.linear, block.linear2):
                        nn.init.normal_(linear.weight, std=backbone.width ** -0.5)
        return adapter.to(_device(backbone)).eval().requires_grad_(False)

    @staticmethod
    def fit(run_dir: Path, command: str, stack: Stack, config: SelfGuidanceTraining, precision: str) -> None:
        """Train the TOAST adapter on ``stack``'s frozen backbone (:mod:`.train`); ``precision``:
        the training autocast (:mod:`migbench.precision`)."""
        from migbench.methods.self_guidance.train import train_adapter

        train_adapter(run_dir, stack, config, command=command, precision=precision)
