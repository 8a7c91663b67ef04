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

The critic is trained by ``migbench fit token_critic`` (see :mod:`.train`) with the paper's
"was sampled" label by default. The paper samples with T = 18 (36 NFE); set ``maskgit.steps``.
Takes the ``scorer`` and ``selector`` slots. Neutral setting: ``enabled = false``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from migbench.backbones.fmnist.transformer import TransformerConfig
from migbench.methods.token_critic.critic import TokenCritic

from migbench import weights
from migbench.config import check_choices, knob
from migbench.rng import gumbel
from migbench.sampler import SamplerBuilder, SampleState
from migbench.slots import lowest


@dataclass(frozen=True)
class TokenCriticConfig:
    weights: str = knob("fmnist_token_critic", "critic weights (a manifest name)")
    noise_scale: float = knob(1.0, "scale of the linearly annealed noise on the critic scores")
    noise: str = knob("uniform", "noise on the scores: uniform (lucidrains) or gumbel", ("uniform", "gumbel"))
    enabled: bool = knob(True, "false installs nothing (the neutral setting)")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.noise_scale < 0:
            raise ValueError(f"token_critic.noise_scale must be >= 0, got {self.noise_scale}")


def _critic(entry: dict[str, Any]) -> TokenCritic:
    return TokenCritic(TransformerConfig(**{k: v for k, v in entry["config"]["model"].items() if k != "kind"}))


def load_critic(name: str) -> TokenCritic:
    """The committed critic ``name`` (sha256-checked, cached per hash)."""
    return weights.load_module(name, _critic)


def remask_anywhere(candidates: torch.Tensor, scores: torch.Tensor, state: SampleState) -> torch.Tensor:
    """Token-Critic's selector: the ``masked_after`` lowest scores over *all* positions are masked."""
    return candidates.masked_fill(lowest(scores, state.info.masked_after), state.backbone.layout.mask_id)


class TokenCriticMethod:
    """Token-Critic: a learned critic picks which tokens to re-mask, anywhere on the canvas."""

    name = "token_critic"
    config_cls = TokenCriticConfig
    trained = True

    @staticmethod
    def neutral_config() -> TokenCriticConfig:
        return TokenCriticConfig(enabled=False)

    @staticmethod
    def install(builder: SamplerBuilder, config: TokenCriticConfig) -> None:
        if not config.enabled:
            return
        device = next(builder.backbone.parameters()).device
        critic = load_critic(config.weights).to(device)
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
    def fit(run_dir: Path, command: str, steps: int | None = None, label: str | None = None,
            init: str | None = None, precision: str = "auto") -> None:
        """Train the critic; ``label`` mask|differs, ``init`` generator|scratch (see :mod:`.train`).
        Non-default choices name the weights ``fmnist_token_critic_<differs>_<scratch>``.
        ``precision``: the training autocast (:mod:`migbench.precision`)."""
        from dataclasses import replace

        from migbench.methods.token_critic.train import CriticRecipe, train_critic

        options = (("steps", steps), ("label", label), ("init", init))
        recipe = replace(CriticRecipe(), **{k: v for k, v in options if v is not None})
        variant = "".join(f"_{v}" for v, default in ((recipe.label, "mask"), (recipe.init, "generator"))
                          if v != default)  # a variant never overwrites the default critic
        train_critic(run_dir, replace(recipe, name=recipe.name + variant), command=command, precision=precision)
