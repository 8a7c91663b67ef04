"""Token-Critic (Lezama et al., "Improved Masked Image Generation with Token-Critic", ECCV 2022).

No official code exists; this follows the paper (reference note part B) and says where the known
reimplementations differ. Each step of T:

1. the generator fills every masked position (MaskGIT's token sampler and temperature);
2. the critic scores the whole canvas: l_fake (B, N), one extra network pass (NFE = 2 per step);
3. keep-score = -l_fake + noise_scale * (1 - (k+1)/T) * noise, noise ~ U(-1/2, 1/2) (the linear
   anneal of lucidrains/muse-maskgit-pytorch's ``critic_noise_scale``; the paper's exact noise
   form is not published; ``noise = "gumbel"`` uses MaskGIT-style Gumbel noise instead);
4. the ``masked_after`` lowest keep-scores over *all* positions are re-masked, so tokens accepted
   at an earlier step can be revoked (x-transformers' ``can_mask_prev_unmasked=False`` blocks
   this; we follow the paper).

The critic is a network of the generator's family (:mod:`.critic`), trained per stack by
``migbench fit token_critic`` (see :mod:`.train`) with the paper's "was sampled" label by default.
The paper samples with T = 18 (36 NFE); set ``maskgit.steps``. Takes the ``scorer`` and
``selector`` slots. Neutral setting: ``enabled = false``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from migbench.methods.token_critic.critic import TokenCritic, check_trained_for, critic_for

from migbench import weights
from migbench.api import Backbone, Stack
from migbench.config import AUTO, RANDOM_PARTS, check_bounds, check_choices, knob
from migbench.rng import gumbel
from migbench.sampler import SamplerBuilder, SampleState
from migbench.schedules import MASK_SCHEDULES
from migbench.slots import lowest


@dataclass(frozen=True)
class TokenCriticConfig:
    weights: str = knob(AUTO, "critic weights (a manifest name; auto = the stack's)")
    noise_scale: float = knob(1.0, "scale of the linearly annealed noise on the critic scores")
    noise: str = knob("uniform", "noise on the scores: uniform (lucidrains) or gumbel", ("uniform", "gumbel"))
    enabled: bool = knob(True, "false installs nothing (the neutral setting)")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.noise_scale < 0:
            raise ValueError(f"token_critic.noise_scale must be >= 0, got {self.noise_scale}")


@dataclass(frozen=True)
class TokenCriticTraining:
    """`migbench fit token_critic` (:mod:`.train`): the critic against the frozen generator."""

    name: str = knob(AUTO, "weights name; auto = <stack>_token_critic, then _differs / _scratch "
                             "for those choices (a variant never overwrites the default critic)")
    label: str = knob("mask", "target: mask = the token was sampled (paper), differs = it differs "
                              "from the real one (lucidrains)", ("mask", "differs"))
    init: str = knob("generator", "body: generator = the generator's weights (ours), scratch = the "
                                  "family's random initialisation", ("generator", "scratch"))
    mask_schedule: str = knob("cosine", "the generator's training mask schedule", tuple(MASK_SCHEDULES))
    steps: int = knob(200, "optimiser steps")
    batch_size: int = knob(256, "token maps per step")
    lr: float = knob(2e-4, "peak AdamW learning rate (cosine to lr / 20)")
    warmup: int = knob(50, "linear warm-up steps")
    weight_decay: float = knob(0.05, "AdamW weight decay")
    seed: int = knob(0, "seed of the batches and draws")

    def __post_init__(self) -> None:
        check_choices(self)
        check_bounds(self, "fit token_critic", at_least_one=("steps", "batch_size"), positive=("lr",),
                     non_negative=("warmup", "weight_decay"))

    def weights_name(self, stack: Stack) -> str:
        """``name``, or for auto ``<stack>_token_critic`` with ``_differs`` / ``_scratch`` for
        the non-default label / init (``fmnist_token_critic_differs_scratch``)."""
        if self.name != AUTO:
            return self.name
        variant = "".join(f"_{v}" for v, default in ((self.label, "mask"), (self.init, "generator"))
                          if v != default)
        return f"{stack.name}_token_critic{variant}"


def load_critic(name: str, backbone: Backbone) -> TokenCritic:
    """The committed critic ``name`` for ``backbone`` (sha256-checked, cached per hash and
    backbone), on its device: the body a copy of ``backbone``, refused in one line when the
    manifest entry records another backbone's ``describe()``."""
    def build(entry: dict[str, Any]) -> TokenCritic:
        check_trained_for(name, entry["config"]["model"], backbone)
        return critic_for(backbone)
    return weights.load_module(name, build, key=backbone)


def remask_anywhere(candidates: torch.Tensor, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
    """Token-Critic's selector: the ``masked_after`` lowest scores over *all* positions are masked."""
    return candidates.masked_fill(lowest(scores, state.info.masked_after), state.backbone.layout.mask_id)


class TokenCriticMethod:
    """Token-Critic: a learned critic picks which tokens to re-mask, anywhere on the canvas."""

    name = "token_critic"
    config_cls = TokenCriticConfig
    fit_config_cls = TokenCriticTraining
    trained = True

    @staticmethod
    def neutral_config() -> TokenCriticConfig:
        return TokenCriticConfig(enabled=False)

    @staticmethod
    def install(builder: SamplerBuilder, config: TokenCriticConfig) -> None:
        if not config.enabled:
            return
        name = builder.weights_name(TokenCriticMethod.name, "weights", config.weights)
        critic = (TokenCriticMethod.random_parts(builder.stack) if name == RANDOM_PARTS
                  else load_critic(name, builder.backbone))
        builder.add_parameters(TokenCriticMethod.name, online=sum(p.numel() for p in critic.parameters()))

        def scorer(candidates: torch.Tensor, logp: torch.Tensor, state: SampleState) -> torch.Tensor:
            state.count("critic")
            keep = -critic(candidates, state.labels)
            anneal = config.noise_scale * (1.0 - (state.info.step + 1) / state.info.num_steps)
            if anneal == 0.0:
                return keep
            if config.noise == "uniform":
                noise = torch.rand(keep.shape, generator=state.generator, device=keep.device) - 0.5
            else:
                noise = gumbel(keep.shape, state.generator, keep.device)
            return keep + anneal * noise

        builder.claim("scorer", scorer, TokenCriticMethod.name)
        builder.claim("selector", remask_anywhere, TokenCriticMethod.name)

    @staticmethod
    def random_parts(stack: Stack, seed: int = 0) -> TokenCritic:
        """A critic for ``stack.backbone`` (on its device, eval, no grad) for tests: its body a copy
        of the backbone, its head drawn with std 1/sqrt(d), so the scores vary by O(1) across tokens."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            critic = critic_for(stack.backbone)
            head = critic.body.head.weight
            with torch.no_grad():
                head.copy_(torch.randn(head.shape) * stack.backbone.width ** -0.5)
        return critic.eval().requires_grad_(False)

    @staticmethod
    def fit(run_dir: Path, command: str, stack: Stack, config: TokenCriticTraining, precision: str) -> None:
        """Train the critic against ``stack``'s frozen backbone (:mod:`.train`); ``precision``:
        the training autocast (:mod:`migbench.precision`)."""
        from migbench.methods.token_critic.train import train_critic

        train_critic(run_dir, stack, config, command=command, precision=precision)
