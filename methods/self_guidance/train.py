"""`migbench fit self_guidance`: error-token-correction fine-tuning of the TOAST adapter.

Per batch (official code ``gen_corr_loss_toast``; the README credits CMLMC):

1. mask ground-truth tokens MaskGIT-style: ceil(cos(pi r / 2) N) positions, r ~ U(0, 1), >= 1;
2. with no gradients, the frozen backbone sees class + all [MASK] and draws one sample per
   position: from softmax(l) (``substitutes="model"``, the paper's "the model's own samples",
   the default) or, as the released code does (toast.py 807-809, fidelity finding F6), from
   softmax(p) with p = softmax(l) already probabilities (``substitutes="upstream"``: every code's
   chance within a factor e of uniform, so nearly uniform substitutions);
3. round(0.3 #visible) visible tokens (at least one, when any is visible), chosen uniformly, are
   replaced by those samples;
4. the main pass runs on that corrupted canvas (frozen), the adapter's auxiliary pass predicts,
   and the loss is cross-entropy with label smoothing 0.1 at the replaced positions only, plus
   0.1 x TOAST's feedback loss. No generation loss (``use_generation_loss: False`` upstream).

Upstream: 50k steps at batch 256 (about 10 epochs of ImageNet), AdamW lr 1e-4, betas (0.9, 0.96),
weight decay 0, cosine schedule with 5k warm-up, EMA. :class:`SelfGuidanceTraining`'s defaults
scale this to the Fashion-MNIST stack (steps, warm-up) with the same optimiser settings and no EMA.

Family-agnostic: the frozen backbone is the stack's (moved to the loop's device, the GPU where
there is one, once), token maps come from the stack's data, and the weights are named
``<stack>_self_guidance`` unless ``name`` says otherwise. The backbone's passes run under the same
``precision`` autocast as the adapter's.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from migbench.methods.self_guidance import SelfGuidanceTraining
from migbench.methods.self_guidance.adapter import AuxiliaryPass, TOASTAdapter, auxiliary_logits

from migbench.api import Backbone, HookSet, Stack
from migbench.masking import sample_mask
from migbench.precision import autocast
from migbench.slots import gumbel_max
from migbench.training import TrainLoop, batch_indices, stack_token_maps, warmup_cosine

SUBSTITUTION_RATE = 0.3
FEEDBACK_WEIGHT = 0.1


def substitution_mask(masked: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """(B, N) bool: round(rate * #visible) visible positions per row (>= 1 if any), uniform."""
    visible = ~masked
    count = (visible.sum(1).float() * rate).round().long().clamp_min(1).minimum(visible.sum(1))
    noise = torch.rand(masked.shape, generator=generator).masked_fill(masked, 2.0)
    ranks = noise.argsort(1).argsort(1)
    return ranks < count[:, None]


def substitute_log_probs(logits: torch.Tensor, rule: str) -> torch.Tensor:
    """log-probabilities (B, N, K) the substitutes are drawn from, given the all-[MASK] pass's
    logits (B, N, K): log_softmax(l) (``model``) or log_softmax(softmax(l)) (``upstream``: the
    released code's ``multinomial(l.softmax(-1))`` over ``exp(log_softmax(logits))``)."""
    if rule == "model":
        return torch.log_softmax(logits, -1)
    if rule == "upstream":
        return torch.log_softmax(torch.softmax(logits, -1), -1)
    raise ValueError(f"unknown substitution rule {rule!r}; choose from model, upstream")


@torch.no_grad()
def corrupted_batch(backbone: Backbone, x0: torch.Tensor, labels: torch.Tensor,
                    generator: torch.Generator, rule: str = "model") -> tuple[torch.Tensor, torch.Tensor]:
    """The corrupted canvas (B, N) (mask ids + substituted samples drawn by ``rule``:
    :func:`substitute_log_probs`) and the substitution mask, on the device of ``x0`` and the backbone.

    Every draw comes from ``generator`` (the step's CPU generator) and is moved to that device.
    The backbone's pass runs in the caller's autocast.
    """
    device = x0.device
    masked = sample_mask(len(x0), x0.shape[1], "cosine", 0.0, generator)
    blank = torch.full_like(x0, backbone.layout.mask_id)
    logits = backbone(blank, labels).logits.float()
    samples = gumbel_max(substitute_log_probs(logits, rule), generator)
    substituted = substitution_mask(masked, SUBSTITUTION_RATE, generator).to(device)
    canvas = torch.where(substituted, samples, x0).masked_fill(masked.to(device), backbone.layout.mask_id)
    return canvas, substituted


def correction_loss(backbone: Backbone, adapter: TOASTAdapter, aux: AuxiliaryPass, hooks: HookSet,
                    x0: torch.Tensor, labels: torch.Tensor, canvas: torch.Tensor, substituted: torch.Tensor,
                    label_smoothing: float) -> tuple[torch.Tensor, dict[str, float]]:
    """CE at the substituted positions of the auxiliary pass + 0.1 x feedback loss."""
    with torch.no_grad():
        main = backbone(canvas, labels)
    aux.block_inputs.clear()
    aux.block_outputs.clear()
    aux.record = True
    logits = auxiliary_logits(backbone, adapter, aux, hooks, labels, main.last_block).float()
    aux.record = False
    correction = F.cross_entropy(logits[substituted], x0[substituted], label_smoothing=label_smoothing)
    feedback = adapter.feedback_loss(aux.block_inputs, aux.block_outputs)
    accuracy = (logits[substituted].argmax(-1) == x0[substituted]).float().mean()
    return correction + FEEDBACK_WEIGHT * feedback, {"correction": float(correction.detach()),
                                                     "feedback": float(feedback.detach()),
                                                     "corrected": float(accuracy)}


@torch.no_grad()
def held_out_correction(backbone: Backbone, adapter: TOASTAdapter, ids: torch.Tensor,
                        labels: torch.Tensor, precision: str, batch: int = 500,
                        rule: str = "model") -> dict[str, float]:
    """Correction accuracy and loss (no smoothing) at substituted positions (drawn by ``rule``) on
    held-out maps, on the adapter's device under ``precision`` autocast."""
    aux = AuxiliaryPass(backbone.depth, signal_bias=adapter.signal_bias)
    hooks = aux.hooks()
    device = next(adapter.parameters()).device
    gen = torch.Generator().manual_seed(2468)
    total = correct = loss = 0.0
    for i in range(0, len(ids), batch):
        x0, y = ids[i:i + batch].to(device), labels[i:i + batch].to(device)
        with autocast(precision, device):
            canvas, substituted = corrupted_batch(backbone, x0, y, gen, rule)
            main = backbone(canvas, y)
            logits = auxiliary_logits(backbone, adapter, aux, hooks, y, main.last_block).float()
        n = int(substituted.sum())
        loss += float(F.cross_entropy(logits[substituted], x0[substituted], reduction="sum"))
        correct += float((logits[substituted].argmax(-1) == x0[substituted]).sum())
        total += n
    return {"held_out_correction_accuracy": round(correct / total, 4),
            "held_out_correction_loss": round(loss / total, 4)}


def train_adapter(run_dir: Path, stack: Stack, training: SelfGuidanceTraining = SelfGuidanceTraining(),
                  command: str = "migbench fit self_guidance", stop_after: int | None = None,
                  precision: str = "auto") -> TOASTAdapter:
    """Train the adapter on ``stack``'s frozen backbone (resuming from ``run_dir``), then save it
    with its manifest entry (name: ``training.name``, or ``<stack>_self_guidance`` for auto)."""
    started = time.monotonic()
    name = f"{stack.name}_self_guidance" if training.name == "auto" else training.name
    loop = TrainLoop(name=f"fit {name}", total_steps=training.steps, seed=training.seed, run_dir=run_dir,
                     precision=precision, stop_after=stop_after, grad_clip=None,
                     lr_at=lambda s: warmup_cosine(s, training.steps, training.warmup, training.lr))
    backbone = stack.backbone.to(loop.device)
    ids, labels = stack_token_maps(stack, "train", loop.device, "fit self_guidance")
    num_classes, width, depth = backbone.layout.num_classes, backbone.width, backbone.depth
    adapter = TOASTAdapter(num_classes, width, depth, training.factor, signal_bias=training.signal_bias)
    aux = AuxiliaryPass(depth, signal_bias=training.signal_bias)
    hooks = aux.hooks()
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=training.lr, betas=(0.9, 0.96), weight_decay=0.0)

    def step_fn(net: torch.nn.Module, step: int, gen: torch.Generator, device: torch.device
                ) -> tuple[torch.Tensor, dict[str, float]]:
        idx = batch_indices(len(ids), training.batch_size, training.seed, step)
        x0, y = ids[idx].to(device), labels[idx].to(device)
        canvas, substituted = corrupted_batch(backbone, x0, y, gen, training.substitutes)
        return correction_loss(backbone, net, aux, hooks, x0, y, canvas, substituted, training.label_smoothing)

    adapter = loop.run(adapter, optimizer, step_fn)
    return loop.publish(
        name, adapter, lambda: TOASTAdapter(num_classes, width, depth, training.factor,
                                            signal_bias=training.signal_bias),
        lambda m: held_out_correction(backbone, m, *stack_token_maps(stack, "test", loop.device, "fit self_guidance"),
                                      loop.precision_used, rule=training.substitutes),
        command=command, started=started,
        config={"model": {"kind": "toast_adapter", "num_classes": num_classes, "width": width,
                          "depth": depth, "factor": training.factor,
                          **({"signal_bias": True} if training.signal_bias else {})},
                "training": asdict(replace(training, name=name)),
                "stack": {"name": stack.name, "weights": dict(stack.weight_hashes)}})
