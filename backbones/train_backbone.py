"""`migbench train backbone`: MaskGIT training of the small transformer on cached token maps.

Per sample: t ~ U(0, 1) (clamped below at ``t_min``), mask ceil(gamma(t) N) random positions
(at least one), replace them by the mask id, drop the class to the null class with probability
``class_dropout``, and minimise cross-entropy with label smoothing at the masked positions only
(Chang et al. 2022). AdamW, warm-up + cosine learning rate, ``precision`` autocast
(:mod:`migbench.precision`), resumable, on the loop's device (the GPU where there is one).

Recipes: ``maskgit`` (cosine schedule) is the default backbone ``fmnist_maskgit``; ``emigm``
follows eMIGM's released training scripts (exp schedule, t clamped at 0.2, loss weight w = 1,
"CFG with mask": the null class is the mask token) and trains ``fmnist_emigm``.
``loss_weight = "elbo"`` weights each sample's loss by gamma'(t)/gamma(t) (eMIGM's ELBO option).
Deviation from eMIGM's code, kept on purpose: t is drawn per sample (upstream: one t per batch,
then one Bernoulli mask shuffled per sample), and exactly ceil(gamma(t) N) tokens are masked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from migbench.backbones.fmnist import TOKENIZER, token_maps
from migbench.backbones.transformer import MaskedTransformer, TransformerConfig

from migbench import weights
from migbench.api import NULL_LABEL
from migbench.precision import autocast
from migbench.schedules import MASK_SCHEDULES, elbo_weight
from migbench.training import TrainLoop, batch_indices, warmup_cosine


@dataclass(frozen=True)
class BackboneRecipe:
    """Training hyper-parameters; :meth:`named` gives the committed recipes."""

    name: str = "fmnist_maskgit"
    mask_schedule: str = "cosine"
    t_min: float = 0.0
    loss_weight: str = "unit"
    null_is_mask: bool = False
    label_smoothing: float = 0.1
    class_dropout: float = 0.1
    steps: int = 1200
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mask_schedule not in MASK_SCHEDULES:
            raise ValueError(f"unknown mask schedule {self.mask_schedule!r}; choose from {sorted(MASK_SCHEDULES)}")
        if self.loss_weight not in ("unit", "elbo"):
            raise ValueError(f"loss_weight must be 'unit' or 'elbo', got {self.loss_weight!r}")

    @staticmethod
    def named(recipe: str, steps: int | None = None) -> BackboneRecipe:
        recipes = {"maskgit": BackboneRecipe(),
                   "emigm": BackboneRecipe(name="fmnist_emigm", mask_schedule="exp", t_min=0.2,
                                           null_is_mask=True)}
        if recipe not in recipes:
            raise ValueError(f"unknown backbone recipe {recipe!r}; choose from {sorted(recipes)}")
        return recipes[recipe] if steps is None else replace(recipes[recipe], steps=steps)


def sample_times(batch: int, t_min: float, generator: torch.Generator) -> torch.Tensor:
    """t (B,) ~ U(0, 1) clamped below at ``t_min`` (eMIGM's clamp_t_min)."""
    return torch.rand(batch, generator=generator).clamp_min(t_min)


def sample_mask(batch: int, num_tokens: int, schedule: str, t_min: float,
                generator: torch.Generator, t: torch.Tensor | None = None) -> torch.Tensor:
    """(B, N) bool training mask: per row ceil(gamma(t) N) random positions (at least one)."""
    gamma = MASK_SCHEDULES[schedule]
    t = sample_times(batch, t_min, generator) if t is None else t
    counts = torch.tensor([min(num_tokens, max(1, math.ceil(gamma(float(v)) * num_tokens))) for v in t])
    ranks = torch.rand(batch, num_tokens, generator=generator).argsort(dim=1).argsort(dim=1)
    return ranks < counts[:, None]


def masked_loss(model: MaskedTransformer, ids: torch.Tensor, labels: torch.Tensor,
                mask: torch.Tensor, label_smoothing: float, weights: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over the masked positions of ``mask`` (B, N), and accuracy there.

    ``weights`` (B,) scale each sample's tokens (ELBO weighting); the sum is divided by the
    number of masked tokens, so unit weights give the plain mean.
    """
    inputs = ids.masked_fill(mask, model.layout.mask_id)
    logits = model(inputs, labels, branch="train").logits.float()
    per_token = F.cross_entropy(logits[mask], ids[mask], label_smoothing=label_smoothing, reduction="none")
    if weights is not None:
        per_token = per_token * weights[:, None].expand_as(mask)[mask]
    accuracy = (logits[mask].argmax(-1) == ids[mask]).float().mean()
    return per_token.mean(), accuracy


VALIDATION_SEED = 1234  # the held-out masks every validation number is measured with
VALIDATION_BATCH = 1000


def validation_masks(rows: int, num_tokens: int, recipe: BackboneRecipe
                     ) -> Iterator[tuple[slice, torch.Tensor]]:
    """The fixed held-out masks: (row slice, mask (b, N) bool) per batch of ``VALIDATION_BATCH`` rows.

    Drawn from one generator (``VALIDATION_SEED``) at the full batch size and cut to the rows left,
    so the masks of the first r rows do not depend on how many rows follow: every caller scoring a
    prefix of the same maps sees the same masks.
    """
    gen = torch.Generator().manual_seed(VALIDATION_SEED)
    for start in range(0, rows, VALIDATION_BATCH):
        mask = sample_mask(VALIDATION_BATCH, num_tokens, recipe.mask_schedule, recipe.t_min, gen)
        stop = min(start + VALIDATION_BATCH, rows)
        yield slice(start, stop), mask[:stop - start]


@torch.no_grad()
def validation_metrics(model: MaskedTransformer, ids: torch.Tensor, labels: torch.Tensor,
                       recipe: BackboneRecipe, precision: str) -> dict[str, float]:
    """Masked-token loss (no smoothing) and accuracy on held-out maps (M, N), with
    :func:`validation_masks`; each batch's per-token mean is weighted by its rows. Runs on the
    model's device under ``precision`` autocast (a trainer passes the precision it trained in)."""
    model.eval()
    device = next(model.parameters()).device
    total_loss = total_acc = 0.0
    with autocast(precision, device):
        for rows, mask in validation_masks(len(ids), ids.shape[1], recipe):
            x, y = ids[rows].to(device), labels[rows].to(device)
            loss, acc = masked_loss(model, x, y, mask.to(device), 0.0)
            total_loss += float(loss) * len(x)
            total_acc += float(acc) * len(x)
    return {"val_masked_loss": round(total_loss / len(ids), 4),
            "val_masked_accuracy": round(total_acc / len(ids), 4)}


def train_backbone(run_dir: Path, recipe: BackboneRecipe = BackboneRecipe(),
                   config: TransformerConfig | None = None, data_dir: str | None = None,
                   command: str = "migbench train backbone", stop_after: int | None = None,
                   commit: bool = True, precision: str = "auto") -> MaskedTransformer:
    """Train (resuming from ``run_dir``), then save ``recipe.name`` with its manifest entry."""
    started = time.monotonic()
    config = config or TransformerConfig(null_is_mask=recipe.null_is_mask)
    loop = TrainLoop(name=f"train {recipe.name}", total_steps=recipe.steps, seed=recipe.seed,
                     run_dir=run_dir, precision=precision, stop_after=stop_after,
                     lr_at=lambda s: warmup_cosine(s, recipe.steps, recipe.warmup, recipe.lr, recipe.lr / 50))
    ids, labels = token_maps("train", TOKENIZER, data_dir, loop.device)
    model = MaskedTransformer(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95),
                                  weight_decay=recipe.weight_decay)

    def step_fn(net: torch.nn.Module, step: int, gen: torch.Generator, device: torch.device
                ) -> tuple[torch.Tensor, dict[str, float]]:
        idx = batch_indices(len(ids), recipe.batch_size, recipe.seed, step)
        x, y = ids[idx], labels[idx].clone()
        y[torch.rand(len(y), generator=gen) < recipe.class_dropout] = NULL_LABEL
        t = sample_times(len(x), recipe.t_min, gen)
        mask = sample_mask(len(x), x.shape[1], recipe.mask_schedule, recipe.t_min, gen, t)
        weights = (torch.tensor([elbo_weight(recipe.mask_schedule, float(v)) for v in t]).to(device)
                   if recipe.loss_weight == "elbo" else None)
        loss, acc = masked_loss(net, x.to(device), y.to(device), mask.to(device), recipe.label_smoothing, weights)
        return loss, {"masked_accuracy": float(acc)}

    model = loop.run(model, optimizer, step_fn)
    if not commit or loop.stops_early:
        return model
    saved = loop.publish(
        recipe.name, model, lambda: MaskedTransformer(config),
        lambda m: validation_metrics(m, *token_maps("test", TOKENIZER, data_dir, loop.device), recipe,
                                     loop.precision_used),
        command=command, started=started,
        config={"model": model.describe(), "recipe": asdict(recipe),
                "tokenizer_sha256": weights.manifest_entry(TOKENIZER)["sha256"]})
    return saved.requires_grad_(False)
