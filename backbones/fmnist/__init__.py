"""The embedded Fashion-MNIST family: our VQ tokenizer (8x8 tokens, K = 512) and MaskGIT-style
transformer, trained here by ``migbench train``, evaluated with our Fashion-MNIST classifier.

Stacks: ``fmnist`` (the default everywhere: ``fmnist_vq`` + ``fmnist_maskgit``, MaskGIT training)
and ``fmnist_emigm`` (the same size trained with eMIGM's choices). Modules: ``transformer``,
``vq_tokenizer``, ``data`` (the IDX reader), ``loading`` (committed weights, token maps),
``train_tokenizer``, ``train_backbone``.
"""

from __future__ import annotations

import torch
from migbench.backbones.fmnist.data import CLASS_NAMES
from migbench.backbones.fmnist.loading import (
    TOKENIZER,
    load_tokenizer,
    load_transformer,
    token_maps,
)

from migbench import weights
from migbench.api import DatasetSpec, Stack


def _token_maps(split: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    return token_maps(split, TOKENIZER, device=device)


FASHION_MNIST = DatasetSpec(name="fashion-mnist", class_names=CLASS_NAMES, reference="fmnist-train",
                            extractor="fmnist-classifier", references=("fmnist-train", "fmnist-test"),
                            floors=True, token_maps=_token_maps)

# The committed weights of each trained method on the MaskGIT-trained backbone ("auto" knobs).
METHOD_WEIGHTS = {"ka_mig": {"weights": "fmnist_ka_mig", "graphs": "fmnist_ka_mig_graphs"},
                  "self_guidance": {"weights": "fmnist_self_guidance"},
                  "token_critic": {"weights": "fmnist_token_critic"}}


def committed(backbone_name: str, stack_name: str, method_weights: dict[str, dict[str, str]]) -> Stack:
    """A stack of committed weights: the Fashion-MNIST tokenizer and ``backbone_name``."""
    return Stack(name=stack_name, tokenizer=load_tokenizer(TOKENIZER), backbone=load_transformer(backbone_name),
                 dataset=FASHION_MNIST,
                 weight_hashes={n: weights.manifest_entry(n)["sha256"] for n in (TOKENIZER, backbone_name)},
                 method_weights=method_weights)


def fmnist() -> Stack:
    """The default: ``fmnist_vq`` + ``fmnist_maskgit`` (MaskGIT training), with every trained method's weights."""
    return committed("fmnist_maskgit", "fmnist", METHOD_WEIGHTS)


def fmnist_emigm() -> Stack:
    """``fmnist_vq`` + ``fmnist_emigm`` (eMIGM's training: exp schedule, t >= 0.2, CFG with mask); no
    trained method's weights were fitted to it."""
    return committed("fmnist_emigm", "fmnist_emigm", {})
