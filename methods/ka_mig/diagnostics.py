"""`migbench diagnose ka_mig`: how much the class-position prior could give, and how much each
trained KA-MIG model takes.

On held-out token maps, with the backbone's fixed validation masks (seed 1234, cosine ratios), for
the backbone and every trained KA-MIG model in the manifest:

- the loss per masked token (nats, no smoothing; the manifest's ``val_masked_loss`` averages
  per image instead, so the two differ slightly);
- the probability mass put on tokens that G_p rules out at that (class, position), i.e. tokens
  never seen there in the training set: ``sum_k softmax(logits)_k * [k incompatible]``;

and, for the backbone alone, the loss after lowering every ruled-out token's logit by a fixed
bias b, ``CE(logits - b * incompatible, target)``, at the best b of a grid: what using G_p as a
plain logit prior would buy, a yardstick for the negative prior P^c that KA-MIG learns to fuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from migbench.backbones.fmnist import TOKENIZER, load_transformer, token_maps
from migbench.backbones.train_backbone import sample_mask
from migbench.methods.ka_mig.train import KAMIGRecipe

from migbench import weights
from migbench.api import HookSet

BIASES = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0)
VALIDATION_SEED = 1234  # the masks of ``validation_metrics``


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
    name: str
    graphs: str
    loss: float
    incompatible_mass: float


@dataclass(frozen=True)
class Diagnosis:
    rows: list[ModelRow]
    incompatible_targets: float  # fraction of held-out masked targets G_p rules out
    biased_losses: dict[float, float]  # bias -> the backbone's loss with that logit prior

    def markdown(self) -> str:
        best = min(self.biased_losses, key=self.biased_losses.__getitem__)
        lines = ["| model | graphs | held-out masked loss | mass on ruled-out tokens |",
                 "|---|---|---:|---:|"]
        lines += [f"| {r.name} | {r.graphs} | {r.loss:.4f} | {r.incompatible_mass:.2%} |" for r in self.rows]
        lines += ["", f"Held-out masked targets that G_p rules out: {self.incompatible_targets:.2%}.",
                  f"Backbone with ruled-out logits lowered by b = {best:g}: loss {self.biased_losses[best]:.4f} "
                  f"(grid: {', '.join(f'{b:g} -> {v:.4f}' for b, v in self.biased_losses.items())})."]
        return "\n".join(lines)


def trained_models() -> list[tuple[str, KAMIGRecipe]]:
    """(name, recipe) of every KA-MIG model in the manifest."""
    out = []
    for name, entry in sorted(weights.read_manifest().items()):
        if entry.get("config", {}).get("model", {}).get("kind") == "ka_mig":
            out.append((name, KAMIGRecipe(**entry["config"]["recipe"])))
    return out


@torch.no_grad()
def diagnose(maps: int = 10_000, batch: int = 1000) -> Diagnosis:
    """Measure the backbone and every trained KA-MIG model on the first ``maps`` held-out maps."""
    from migbench.methods.ka_mig import graphs_from_state, load_module

    if maps < 1:
        raise ValueError(f"maps must be at least 1, got {maps}")
    models = trained_models()
    if not models:
        raise weights.WeightsError("no trained KA-MIG model in the manifest; run `migbench fit ka_mig`")
    backbone = load_transformer(models[0][1].backbone).eval()
    ruled_out_table = graphs_from_state(weights.load_weights(models[0][1].graphs)[0])[2]  # (C, N, K)
    ids, labels = (t[:maps] for t in token_maps("test", TOKENIZER))
    hook_sets: list[tuple[str, str, HookSet]] = [(models[0][1].backbone, "none", HookSet())]
    embeddings = backbone.token_embeddings().float()
    for name, recipe in models:
        module = load_module(name, recipe.graphs, backbone)
        hooks = HookSet()
        for site, hook in module.folded_hooks(recipe.switches(), module.constants(embeddings)).items():
            hooks.add(site, hook, "ka_mig")
        hook_sets.append((name, {"": "all three", "head": "none (head only)"}.get(recipe.only, recipe.only), hooks))

    loss = [0.0] * len(hook_sets)
    mass = [0.0] * len(hook_sets)
    biased = dict.fromkeys(BIASES, 0.0)
    targets_ruled_out = count = 0
    gen = torch.Generator().manual_seed(VALIDATION_SEED)
    for start in range(0, len(ids), batch):
        x, y = ids[start:start + batch], labels[start:start + batch]
        mask = sample_mask(len(x), x.shape[1], "cosine", 0.0, gen)
        inputs = x.masked_fill(mask, backbone.layout.mask_id)
        ruled_out = ruled_out_table[y][mask]  # (M, K) at the masked positions
        targets = x[mask]
        count += len(targets)
        targets_ruled_out += int(ruled_out.gather(1, targets[:, None]).sum())
        for i, (_, _, hooks) in enumerate(hook_sets):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = backbone(inputs, y, hooks).logits.float()[mask]
            loss[i] += float(F.cross_entropy(logits, targets, reduction="sum"))
            mass[i] += float(incompatible_mass(logits, ruled_out).sum())
            if i == 0:
                for b in BIASES:
                    biased[b] += biased_loss_sum(logits, targets, ruled_out, b)
    rows = [ModelRow(name, graphs, loss[i] / count, mass[i] / count)
            for i, (name, graphs, _) in enumerate(hook_sets)]
    return Diagnosis(rows, targets_ruled_out / count, {b: v / count for b, v in biased.items()})
