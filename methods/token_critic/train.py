"""`migbench fit token_critic`: train the critic against the frozen generator.

Per batch (Lezama et al. 2022, sec. 3): take real token maps x0, mask ceil(gamma(t) N) positions
with the generator's training schedule (cosine, t ~ U(0, 1)), let the frozen generator fill the
masked positions by sampling softmax(logits) (temperature 1, class-conditional), and train the
critic with per-token binary cross-entropy. Label ``mask`` (the paper's): 1 where the token was
sampled, even when the sample equals x0. Label ``differs`` (lucidrains/muse-maskgit-pytorch's
deviation): 1 where the spliced token differs from x0. Held-out metrics on test token maps
(fixed masks): AUROC of the critic's logits against the training label, and the
:func:`.critic.breakdown` of the scores against the mask label (within-canvas, by mask ratio,
oracle).

Family-agnostic: the frozen generator is the stack's backbone (moved to the loop's device, the
GPU where there is one, once; its pass runs under the same ``precision`` autocast as the
critic's), token maps come from the stack's data, and the weights are named
``<stack>_token_critic[_differs][_scratch]`` unless ``name`` says otherwise
(:meth:`TokenCriticTraining.weights_name`).

``init``: "generator" (default) makes the critic the generator's family and size (the paper) and
starts its body from the generator's weights (our choice, see :mod:`.critic`); "scratch" the same
network from the family's random initialisation.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from migbench.methods.token_critic import TokenCriticTraining
from migbench.methods.token_critic.critic import (
    TokenCritic,
    auroc,
    breakdown,
    critic_for,
    new_critic,
)

from migbench.api import Backbone, Stack
from migbench.masking import sample_mask
from migbench.precision import autocast
from migbench.slots import gumbel_max
from migbench.training import TrainLoop, batch_indices, stack_token_maps, warmup_cosine


@torch.no_grad()
def corrupt(generator: Backbone, x0: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
            gen: torch.Generator) -> torch.Tensor:
    """x0 (B, N) with the ``mask`` positions replaced by the generator's samples.

    Everything is on the generator's device; the Gumbel noise is drawn from ``gen`` (the step's
    CPU generator) and moved there. The pass runs in the caller's autocast.
    """
    inputs = x0.masked_fill(mask, generator.layout.mask_id)
    logits = generator(inputs, labels).logits.float()
    sampled = gumbel_max(torch.log_softmax(logits, -1), gen)
    return torch.where(mask, sampled, x0)


def critic_labels(x0: torch.Tensor, spliced: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, N) float targets: the mask itself ("mask") or where the splice differs from x0 ("differs")."""
    return (mask if kind == "mask" else spliced != x0).float()


@torch.no_grad()
def held_out_scores(critic: TokenCritic, generator: Backbone, ids: torch.Tensor,
                    labels: torch.Tensor, mask_schedule: str, precision: str, batch: int = 500
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Critic logits (M, N), masks (M, N) and "differs" flags (M, N) on held-out splices (fixed
    masks), on the CPU; both networks run on their device under ``precision`` autocast."""
    critic.eval()
    device = next(critic.parameters()).device
    gen = torch.Generator().manual_seed(4321)
    scores, masks, differs = [], [], []
    with autocast(precision, device):
        for i in range(0, len(ids), batch):
            x0, y = ids[i:i + batch].to(device), labels[i:i + batch].to(device)
            mask = sample_mask(len(x0), x0.shape[1], mask_schedule, 0.0, gen)
            spliced = corrupt(generator, x0, y, mask.to(device), gen)
            scores.append(critic(spliced, y).cpu())
            masks.append(mask)
            differs.append((spliced != x0).cpu())
    return torch.cat(scores), torch.cat(masks), torch.cat(differs)


def held_out_metrics(critic: TokenCritic, generator: Backbone, ids: torch.Tensor,
                     labels: torch.Tensor, training: TokenCriticTraining, precision: str) -> dict[str, object]:
    """The manifest's critic metrics: AUROC against the training label, and the breakdown against
    the mask label (the paper's)."""
    scores, mask, differs = held_out_scores(critic, generator, ids, labels, training.mask_schedule, precision)
    split = breakdown(scores, mask, differs)
    target = mask if training.label == "mask" else differs
    return {"held_out_auroc": round(auroc(scores, target), 4),
            "within_canvas_auroc": split["within_canvas"], "auroc_by_mask_ratio": split["by_ratio"],
            "differing_only_auroc": split["differing_only"], "against_differs_auroc": split["against_differs"],
            "sampled_equal": split["sampled_equal"], "oracle_auroc": split["oracle"]}


def train_critic(run_dir: Path, stack: Stack, training: TokenCriticTraining = TokenCriticTraining(),
                 command: str = "migbench fit token_critic", stop_after: int | None = None,
                 precision: str = "auto") -> TokenCritic:
    """Train the critic against ``stack``'s frozen backbone (resuming from ``run_dir``), then save
    it with its manifest entry (name: :meth:`TokenCriticTraining.weights_name`)."""
    started = time.monotonic()
    name = training.weights_name(stack)
    loop = TrainLoop(name=f"fit {name}", total_steps=training.steps, seed=training.seed, run_dir=run_dir,
                     precision=precision, stop_after=stop_after,
                     lr_at=lambda s: warmup_cosine(s, training.steps, training.warmup, training.lr, training.lr / 20))
    generator = stack.backbone.to(loop.device)
    ids, labels = stack_token_maps(stack, "train", loop.device, "fit token_critic")
    critic = new_critic(stack, training.init)
    optimizer = torch.optim.AdamW(critic.parameters(), lr=training.lr, betas=(0.9, 0.95),
                                  weight_decay=training.weight_decay)

    def step_fn(net: torch.nn.Module, step: int, gen: torch.Generator, device: torch.device
                ) -> tuple[torch.Tensor, dict[str, float]]:
        idx = batch_indices(len(ids), training.batch_size, training.seed, step)
        x0, y = ids[idx].to(device), labels[idx].to(device)
        mask = sample_mask(len(x0), x0.shape[1], training.mask_schedule, 0.0, gen).to(device)
        spliced = corrupt(generator, x0, y, mask, gen)
        target = critic_labels(x0, spliced, mask, training.label)
        logits = net(spliced, y)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        return loss, {"accuracy": float(((logits > 0).float() == target).float().mean())}

    critic = loop.run(critic, optimizer, step_fn)
    return loop.publish(
        name, critic, lambda: critic_for(generator),
        lambda m: held_out_metrics(m, generator, *stack_token_maps(stack, "test", loop.device, "fit token_critic"),
                                   training, loop.precision_used),
        command=command, started=started,
        config={"model": critic.describe(), "training": asdict(replace(training, name=name)),
                "stack": {"name": stack.name, "weights": dict(stack.weight_hashes)}})
