"""The embedded Fashion-MNIST stack: loading the committed tokenizer and backbones, token maps.

Token maps of both splits are encoded once per tokenizer and cached under
``<cache>/tokens/<tokenizer sha256[:16]>-<split>.pt``, so a retrained tokenizer never reuses
stale maps. The backbone trainer, the critic and adapter trainers and KA-MIG's graph builder
all read them through :func:`token_maps`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from migbench.backbones.fmnist.data import load_split
from migbench.backbones.fmnist.transformer import MaskedTransformer, TransformerConfig
from migbench.backbones.fmnist.vq_tokenizer import VQConfig, VQTokenizer

from migbench import weights
from migbench.paths import cache_dir

TOKENIZER = "fmnist_vq"


def _config_from_entry(entry: dict, cls: type) -> object:
    fields = {k: tuple(v) if isinstance(v, list) else v
              for k, v in entry["config"]["model"].items() if k != "kind"}
    return cls(**fields)


def load_tokenizer(name: str = TOKENIZER, folder: Path | None = None) -> VQTokenizer:
    """The committed tokenizer ``name`` (sha256-checked), in eval mode with gradients off."""
    return weights.load_into(name, lambda entry: VQTokenizer(_config_from_entry(entry, VQConfig)), folder)


def load_transformer(name: str, folder: Path | None = None) -> MaskedTransformer:
    """A committed backbone ``name`` (sha256-checked), in eval mode with gradients off."""
    return weights.load_into(name, lambda entry: MaskedTransformer(_config_from_entry(entry, TransformerConfig)),
                             folder)


@torch.no_grad()
def encode_all(tokenizer: VQTokenizer, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """images (M, 1, 32, 32) -> ids (M, N) int16 on the CPU, encoded on the tokenizer's device."""
    device = tokenizer.codebook().device
    return torch.cat([tokenizer.encode(images[i:i + batch].to(device)).to(torch.int16).cpu()
                      for i in range(0, len(images), batch)])


def token_maps(split: str, tokenizer_name: str = TOKENIZER, data_dir: str | None = None,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (M, N) int64 and labels (M,) of a split on the CPU, cached by the tokenizer's
    sha256; a missing cache is encoded on ``device`` (a trainer passes its own)."""
    sha = weights.manifest_entry(tokenizer_name)["sha256"]
    path = cache_dir() / "tokens" / f"{sha[:16]}-{split}.pt"
    if path.exists():
        cached = torch.load(path, map_location="cpu")
        return cached["ids"].long(), cached["labels"]
    images, labels = load_split(split, data_dir).tensors()
    ids = encode_all(load_tokenizer(tokenizer_name).to(device), images)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"ids": ids, "labels": labels, "tokenizer_sha256": sha}, tmp)
    os.replace(tmp, path)
    return ids.long(), labels
