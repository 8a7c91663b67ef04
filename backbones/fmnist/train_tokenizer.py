"""`migbench train tokenizer`: fit the VQ tokenizer on Fashion-MNIST train and commit its weights.

Loss: mean squared error of the reconstruction in [-1, 1] + ``commitment`` x ||z - sg(q)||^2;
the codebook itself moves by EMA (see :mod:`migbench.backbones.fmnist.vq_tokenizer`). AdamW with a
warm-up/cosine learning rate, ``precision`` autocast (:mod:`migbench.precision`), on the loop's
device (the GPU where there is one). Metrics written to the manifest are measured on the whole
test split with the weights exactly as saved (fp16 round trip), in fp32, on that device.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from migbench.backbones.fmnist.data import load_split
from migbench.backbones.fmnist.vq_tokenizer import VQConfig, VQTokenizer

from migbench.training import TrainLoop, batch_indices, warmup_cosine


@dataclass(frozen=True)
class TokenizerTraining:
    """Training hyper-parameters of the committed tokenizer."""

    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    seed: int = 0


@torch.no_grad()
def tokenizer_metrics(tokenizer: VQTokenizer, images: torch.Tensor, batch: int = 500) -> dict[str, float]:
    """Test PSNR (dB, over [0,1] images, mean of per-image PSNR) and the fraction of codes used,
    on the tokenizer's device."""
    tokenizer.eval()
    device = tokenizer.codebook().device
    psnrs, used = [], torch.zeros(tokenizer.codebook_size, dtype=torch.bool, device=device)
    for start in range(0, len(images), batch):
        x = images[start:start + batch].to(device)
        ids = tokenizer.encode(x)
        used[ids.unique()] = True
        mse = F.mse_loss(tokenizer.decode(ids), x, reduction="none").flatten(1).mean(1)
        psnrs.append(10 * torch.log10(1.0 / mse.clamp_min(1e-10)))
    return {"test_psnr_db": round(float(torch.cat(psnrs).mean()), 3),
            "codebook_usage": round(float(used.float().mean()), 4)}


def train_tokenizer(run_dir: Path, name: str = "fmnist_vq", training: TokenizerTraining = TokenizerTraining(),
                    config: VQConfig = VQConfig(), data_dir: str | None = None,
                    command: str = "migbench train tokenizer", stop_after: int | None = None,
                    commit: bool = True, precision: str = "auto") -> VQTokenizer:
    """Train (resuming from ``run_dir``), then save ``name`` with its manifest entry."""
    started = time.monotonic()
    loop = TrainLoop(name=f"train {name}", total_steps=training.steps, seed=training.seed,
                     run_dir=run_dir, precision=precision, stop_after=stop_after,
                     lr_at=lambda s: warmup_cosine(s, training.steps, training.warmup, training.lr, training.lr / 20))
    train_images, _ = load_split("train", data_dir).tensors()
    tokenizer = VQTokenizer(config)
    optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=training.lr, betas=(0.9, 0.99),
                                  weight_decay=training.weight_decay)

    def step_fn(model: torch.nn.Module, step: int, gen: torch.Generator, device: torch.device
                ) -> tuple[torch.Tensor, dict[str, float]]:
        x = train_images[batch_indices(len(train_images), training.batch_size, training.seed, step)].to(device)
        recon, ids, commitment = model.reconstruct(x, gen)
        mse = F.mse_loss(recon.float(), x * 2.0 - 1.0)
        used = float(ids.unique().numel()) / config.codebook_size
        return mse + config.commitment * commitment, {"mse": float(mse.detach()), "batch_code_use": used}

    tokenizer = loop.run(tokenizer, optimizer, step_fn)
    if not commit or loop.stops_early:
        return tokenizer
    test_images, _ = load_split("test", data_dir).tensors()
    saved = loop.publish(name, tokenizer, lambda: VQTokenizer(config),
                         lambda m: tokenizer_metrics(m, test_images), command=command, started=started,
                         config={"model": tokenizer.describe(), "training": asdict(training)})
    return saved.requires_grad_(False)
