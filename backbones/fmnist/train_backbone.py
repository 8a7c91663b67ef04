"""`migbench train backbone`: MaskGIT training of the small transformer on cached token maps.

Per sample: t ~ U(0, 1) (clamped below at ``t_min``), mask ceil(gamma(t) N) random positions
(at least one), replace them by the mask id, drop the class to the null class with probability
``class_dropout``, and minimise cross-entropy with label smoothing at the masked positions only
(Chang et al. 2022). AdamW, warm-up + cosine learning rate, ``precision`` autocast
(:mod:`migbench.precision`), resumable, on the loop's device (the GPU where there is one).

Presets: ``maskgit`` (cosine schedule) is the default backbone ``fmnist_maskgit``; ``emigm``
follows eMIGM's released training scripts (exp schedule, t clamped at 0.2, loss weight w = 1,
"CFG with mask": the null class is the mask token) and trains ``fmnist_emigm``.
``loss_weight = "elbo"`` weights each sample's loss by gamma'(t)/gamma(t) (eMIGM's ELBO option).
Deviation from eMIGM's code, kept on purpose: t is drawn per sample (upstream: one t per batch,
then one Bernoulli mask shuffled per sample), and exactly ceil(gamma(t) N) tokens are masked.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from migbench.backbones.fmnist.loading import TOKENIZER, token_maps
from migbench.backbones.fmnist.transformer import MaskedTransformer, TransformerConfig

from migbench import weights
from migbench.api import NULL_LABEL
from migbench.masking import masked_loss, sample_mask, sample_times, validation_metrics
from migbench.schedules import MASK_SCHEDULES, elbo_weight
from migbench.training import TrainLoop, batch_indices, warmup_cosine


@dataclass(frozen=True)
class BackboneTraining:
    """Training hyper-parameters; :meth:`preset` gives the committed presets."""

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
    def preset(name: str, steps: int | None = None) -> BackboneTraining:
        presets = {"maskgit": BackboneTraining(),
                   "emigm": BackboneTraining(name="fmnist_emigm", mask_schedule="exp", t_min=0.2,
                                             null_is_mask=True)}
        if name not in presets:
            raise ValueError(f"unknown backbone training preset {name!r}; choose from {sorted(presets)}")
        return presets[name] if steps is None else replace(presets[name], steps=steps)


def train_backbone(run_dir: Path, training: BackboneTraining = BackboneTraining(),
                   config: TransformerConfig | None = None, data_dir: str | None = None,
                   command: str = "migbench train backbone", stop_after: int | None = None,
                   commit: bool = True, precision: str = "auto") -> MaskedTransformer:
    """Train (resuming from ``run_dir``), then save ``training.name`` with its manifest entry."""
    started = time.monotonic()
    config = config or TransformerConfig(null_is_mask=training.null_is_mask)
    loop = TrainLoop(name=f"train {training.name}", total_steps=training.steps, seed=training.seed,
                     run_dir=run_dir, precision=precision, stop_after=stop_after,
                     lr_at=lambda s: warmup_cosine(s, training.steps, training.warmup, training.lr, training.lr / 50))
    ids, labels = token_maps("train", TOKENIZER, data_dir, loop.device)
    model = MaskedTransformer(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.lr, betas=(0.9, 0.95),
                                  weight_decay=training.weight_decay)

    def step_fn(net: torch.nn.Module, step: int, gen: torch.Generator, device: torch.device
                ) -> tuple[torch.Tensor, dict[str, float]]:
        idx = batch_indices(len(ids), training.batch_size, training.seed, step)
        x, y = ids[idx], labels[idx].clone()
        y[torch.rand(len(y), generator=gen) < training.class_dropout] = NULL_LABEL
        t = sample_times(len(x), training.t_min, gen)
        mask = sample_mask(len(x), x.shape[1], training.mask_schedule, training.t_min, gen, t)
        weights = (torch.tensor([elbo_weight(training.mask_schedule, float(v)) for v in t]).to(device)
                   if training.loss_weight == "elbo" else None)
        loss, acc = masked_loss(net, x.to(device), y.to(device), mask.to(device), training.label_smoothing, weights)
        return loss, {"masked_accuracy": float(acc)}

    model = loop.run(model, optimizer, step_fn)
    if not commit or loop.stops_early:
        return model
    saved = loop.publish(
        training.name, model, lambda: MaskedTransformer(config),
        lambda m: validation_metrics(m, *token_maps("test", TOKENIZER, data_dir, loop.device),
                                     training.mask_schedule, training.t_min,
                                     loop.precision_used),
        command=command, started=started,
        config={"model": model.describe(), "training": asdict(training),
                "tokenizer_sha256": weights.manifest_entry(TOKENIZER)["sha256"]})
    return saved.requires_grad_(False)
