"""`migbench train classifier`: the Fashion-MNIST metrics network (>= 90% test accuracy).

Cross-entropy with label smoothing 0.1, SGD-free AdamW with warm-up/cosine, light augmentation
(random horizontal flip and a random shift of up to 2 pixels, both seeded per step), fp32 (the
metric network stays out of bf16: ``precision="auto"`` means fp32 here; an explicit bf16 or fp16 is
honoured), on the loop's device (the GPU where there is one). Test accuracy is measured on the
weights exactly as saved, in fp32.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from migbench.backbones.fmnist.data import load_split
from migbench.benchmarks.metrics.fmnist_classifier import FMNISTClassifier
from migbench.benchmarks.metrics.loading import CLASSIFIER

from migbench.training import TrainLoop, batch_indices, warmup_cosine


@dataclass(frozen=True)
class ClassifierTraining:
    steps: int = 1800
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.05
    seed: int = 0


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and integer shift in [-2, 2] per image: (B, 1, 32, 32)."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    shifts = torch.randint(-2, 3, (len(x), 2), generator=gen)
    return torch.stack([torch.roll(img, (int(dy), int(dx)), dims=(1, 2))
                        for img, (dy, dx) in zip(x, shifts, strict=True)])


@torch.no_grad()
def accuracy(net: FMNISTClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``net`` on ``images`` (M, 1, 32, 32), on the network's device."""
    net.eval()
    device = next(net.parameters()).device
    correct = sum(int((net(images[i:i + 1000].to(device))[1].argmax(1).cpu() == labels[i:i + 1000]).sum())
                  for i in range(0, len(images), 1000))
    return correct / len(images)


def train_classifier(run_dir: Path, training: ClassifierTraining = ClassifierTraining(),
                     data_dir: str | None = None, command: str = "migbench train classifier",
                     stop_after: int | None = None, precision: str = "auto") -> FMNISTClassifier:
    """Train (resuming from ``run_dir``), then save the classifier with its manifest entry;
    ``precision`` ``auto`` trains in fp32 (see the module docstring)."""
    started = time.monotonic()
    loop = TrainLoop(name="train classifier", total_steps=training.steps, seed=training.seed,
                     run_dir=run_dir, precision="fp32" if precision == "auto" else precision,
                     stop_after=stop_after,
                     lr_at=lambda s: warmup_cosine(s, training.steps, training.warmup, training.lr, 0.0))
    images, labels = load_split("train", data_dir).tensors()
    net = FMNISTClassifier()
    optimizer = torch.optim.AdamW(net.parameters(), lr=training.lr, weight_decay=training.weight_decay)

    def step_fn(model: torch.nn.Module, step: int, gen: torch.Generator, device: torch.device
                ) -> tuple[torch.Tensor, dict[str, float]]:
        idx = batch_indices(len(images), training.batch_size, training.seed, step)
        x, y = augment(images[idx], gen).to(device), labels[idx].to(device)
        _, logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=0.1)
        return loss, {"train_accuracy": float((logits.argmax(1) == y).float().mean())}

    net = loop.run(net, optimizer, step_fn)
    if loop.stops_early:
        return net
    test_images, test_labels = load_split("test", data_dir).tensors()
    saved = loop.publish(
        CLASSIFIER, net, FMNISTClassifier,
        lambda m: {"test_accuracy": round(accuracy(m, test_images, test_labels), 4)},
        command=command, started=started, half=False,
        config={"model": {"kind": "fmnist_classifier", "feature_dim": 256}, "training": asdict(training)})
    return saved
