"""`migbench diagnose ka_mig`: how much the class-position prior could give, and how much each
trained KA-MIG model takes.

On a stack's held-out token maps, with the MaskGIT recipe's fixed validation masks
(:func:`~migbench.masking.validation_masks`, cosine ratios), for the stack's frozen backbone
and every KA-MIG model in the manifest fitted to that stack:

- the loss per masked token (nats, no smoothing). The manifest's ``val_masked_loss`` differs in
  the last digits: it weights each batch's mean by its rows, runs the online path (here the
  folded one) and is rounded to 4 places;
- the probability mass put on tokens that G_p rules out at that (class, position), i.e. tokens
  never seen there in the training set: ``sum_k softmax(logits)_k * [k ruled out]``;
- the loss after lowering every ruled-out token's logit by a fixed bias b,
  ``CE(logits - b * ruled_out, target)``, at the best b of ``BIASES``: what G_p gives used as a
  plain logit prior on top of that model, a yardstick for the negative prior P^c that KA-MIG
  learns to fuse. b is picked on the same maps it is scored on (one number over ~10^5 tokens).

The passes run on the GPU where there is one (else the CPU) under ``precision`` autocast
(:mod:`migbench.precision`); the folded tables are built on the CPU, as at install time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from migbench.methods.ka_mig.graphs import graphs_from_state
from migbench.methods.ka_mig.train import fitted_to, recorded_training, trained_switches

from migbench import weights
from migbench.api import HookSet, Stack
from migbench.masking import VALIDATION_SEED, validation_masks
from migbench.precision import autocast, resolve
from migbench.training import stack_token_maps

BIASES = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0)
GRAPH_LABELS = {"": "all three", "cooccurrence": "G_co only", "semantic": "G_s only",
                "incompatibility": "G_p only", "head": "none (head only)"}


def incompatible_mass(logits: torch.Tensor, ruled_out: torch.Tensor) -> torch.Tensor:
    """Probability on ruled-out tokens: logits (M, K), ruled_out (M, K) bool -> (M,)."""
    return (logits.float().softmax(-1) * ruled_out).sum(-1)


def biased_loss_sum(logits: torch.Tensor, targets: torch.Tensor, ruled_out: torch.Tensor,
                    bias: float) -> float:
    """Summed cross-entropy after lowering ruled-out logits by ``bias``: logits (M, K), targets (M,)."""
    shifted = logits.float() - bias * ruled_out.float()
    return float(F.cross_entropy(shifted, targets, reduction="sum"))


@dataclass(frozen=True)
class ModelRow:
    """One model's held-out numbers, per masked token."""

    name: str
    graphs: str
    loss: float
    ruled_out_mass: float
    biased_losses: Mapping[float, float]  # bias b -> loss with ruled-out logits lowered by b

    def best_bias(self) -> float:
        return min(self.biased_losses, key=self.biased_losses.__getitem__)


@dataclass(frozen=True)
class Diagnosis:
    """Every model's row and what was measured on."""

    rows: tuple[ModelRow, ...]
    maps: int
    masked_tokens: int
    ruled_out_targets: float  # fraction of held-out masked targets G_p rules out
    device: str  # where the passes ran (cpu, cuda)
    precision: str  # the autocast precision used: bf16, fp16 or fp32

    def markdown(self) -> str:
        lines = ["| model | graphs | held-out masked loss | mass on ruled-out tokens | "
                 "loss with G_p as a logit prior (best b) |", "|---|---|---:|---:|---:|"]
        for r in self.rows:
            b = r.best_bias()
            edge = " (grid edge)" if b in (BIASES[0], BIASES[-1]) else ""
            lines.append(f"| {r.name} | {r.graphs} | {r.loss:.4f} | {r.ruled_out_mass:.2%} | "
                         f"{r.biased_losses[b]:.4f} (b = {b:g}{edge}) |")
        lines += ["", f"{self.maps:,} held-out maps, {self.masked_tokens:,} masked tokens (validation masks, "
                      f"seed {VALIDATION_SEED}); {self.ruled_out_targets:.2%} of the masked targets are "
                      f"tokens G_p rules out. b is picked from {', '.join(f'{b:g}' for b in BIASES)} on these maps; "
                      f"passes in {self.precision} on {self.device}."]
        return "\n".join(lines)


def trained_models(stack: Stack) -> list[tuple[str, dict[str, Any]]]:
    """(name, training config) of every KA-MIG model in the manifest fitted to ``stack``, sorted by name."""
    return [(name, recorded_training(entry)) for name, entry in sorted(weights.read_manifest().items())
            if entry.get("config", {}).get("model", {}).get("kind") == "ka_mig" and fitted_to(entry, stack)]


@torch.no_grad()
def diagnose(stack: Stack, maps: int = 10_000, device: torch.device | str | None = None,
             precision: str = "auto") -> Diagnosis:
    """Measure ``stack``'s frozen backbone and every KA-MIG model fitted to it on the first
    ``maps`` held-out maps (the stack's test split), on ``device`` (default: CUDA where
    available, else the CPU) under ``precision`` autocast."""
    from migbench.methods.ka_mig import load_module

    if maps < 1:
        raise ValueError(f"maps must be at least 1, got {maps}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    used = resolve(precision, device)
    models = trained_models(stack)
    if not models:
        raise weights.WeightsError(f"no KA-MIG model fitted to stack {stack.name} in the manifest; "
                                   f"run `migbench fit ka_mig --backbone {stack.name}`")
    shared = {training["graphs"] for _, training in models}
    if len(shared) > 1:
        raise ValueError(f"the KA-MIG models of stack {stack.name} use different graphs ({sorted(shared)}); "
                         "diagnose compares models of one set of graphs")
    graphs_name = shared.pop()
    backbone = stack.backbone.eval()
    ruled_out_table = graphs_from_state(weights.load_weights(graphs_name)[0])[2]  # (C, N, K)
    ids, labels = stack_token_maps(stack, "test", device, "diagnose ka_mig")
    if maps > len(ids):
        raise ValueError(f"--maps {maps}: the test split of stack {stack.name} holds {len(ids):,} token maps; "
                         f"use --maps {len(ids)} or fewer")
    ids, labels = ids[:maps].cpu(), labels[:maps].cpu()
    hook_sets: list[tuple[str, str, HookSet]] = [(stack.name, "— (frozen backbone)", HookSet())]
    embeddings = backbone.token_embeddings().float()
    for name, training in models:
        only = training.get("only", "")
        module = load_module(name, graphs_name, backbone).cpu()  # folded on the CPU, as install does
        hooks = module.hook_set(module.folded_hooks(trained_switches(only), module.constants(embeddings), device))
        module.to(device)  # the head copy (and an unfolded prior's projections) run per pass
        hook_sets.append((name, GRAPH_LABELS[only], hooks))
    backbone.to(device)

    loss = [0.0] * len(hook_sets)
    mass = [0.0] * len(hook_sets)
    biased = [dict.fromkeys(BIASES, 0.0) for _ in hook_sets]
    ruled_out_targets = count = 0
    for rows, mask in validation_masks(len(ids), ids.shape[1], "cosine", 0.0):
        x, y = ids[rows], labels[rows]
        ruled_out = ruled_out_table[y][mask]  # (M, K) at the masked positions
        targets = x[mask]
        count += len(targets)
        ruled_out_targets += int(ruled_out.gather(1, targets[:, None]).sum())
        inputs = x.masked_fill(mask, backbone.layout.mask_id).to(device)
        y, mask, ruled_out, targets = y.to(device), mask.to(device), ruled_out.to(device), targets.to(device)
        for i, (_, _, hooks) in enumerate(hook_sets):
            with autocast(used, device):
                logits = backbone(inputs, y, hooks).logits.float()[mask]
            loss[i] += float(F.cross_entropy(logits, targets, reduction="sum"))
            mass[i] += float(incompatible_mass(logits, ruled_out).sum())
            for b in BIASES:
                biased[i][b] += biased_loss_sum(logits, targets, ruled_out, b)
    rows_out = tuple(ModelRow(name, graphs, loss[i] / count, mass[i] / count,
                              {b: v / count for b, v in biased[i].items()})
                     for i, (name, graphs, _) in enumerate(hook_sets))
    return Diagnosis(rows_out, len(ids), count, ruled_out_targets / count, device.type, used)
