"""The released self-guidance adapter (JiwanHur/UnlockMGM @33e139a, README "Fine-tuning
checkpoints") through our self-guidance method.

What was released: ``HURJIWAN/UnlockMGM`` on the Hugging Face hub, ``UnlockMGM_imagenet_256.zip``
and ``UnlockMGM_imagenet_512.zip``. Per the evaluation scripts (``evaluations/sample_sg_{256,512}.py``:
``results_corr/ft_{256,512}_toast_cls_b256_corr/checkpoint-50000/ema_model``) and the training
script (``training/ft_maskgit_org_toast.py``: ``EMAModel.save_pretrained`` -> ``ModelMixin.
save_pretrained`` -> ``torch.save(state_dict, "pytorch_model.bin")``), the weights are the
``ema_model`` folder's ``pytorch_model.bin``: a bare state dict (no container) of the whole
``MaskGitTransformerTOAST``, 450 keys = the Google-layout backbone's 394 (``embed.*``,
``transformer_layers.*``, ``mlm_layer.*``; frozen during fine-tuning, ``train_head: False``, so
the converted Google MaskGIT weights) + the TOAST part's 56 (``cls_anchor_gen.*``,
``top_down_transform``, ``decoders.*``; 41,793,808 parameters; listing
``backbones/openmuse/keys/toast_adapter.json``).

The files are zip archives, which the checkpoint cache does not open: download by hand, unzip,
and ``migbench import unlockmgm_toast_256 <...>/checkpoint-50000/ema_model/pytorch_model.bin``
(the folder above ``checkpoint-50000`` inside the archive was not read here). Each file is
imported twice, split by ``ignore`` (as KA-MIG's release): the adapter part (:data:`ADAPTERS`)
and the backbone part (:data:`BACKBONES`, the stack's weights).

:func:`load_release` builds a :class:`~.adapter.TOASTAdapter` as upstream's (no null-class row,
``signal_bias=True``: upstream calls the value Linear on the top-down signal, so its bias counts
twice) and loads the adapter part strictly. Sample it as the evaluation scripts do:
``maskgit.steps=18 maskgit.choice_temperature=25`` (45 at 512 px) ``maskgit.choice_anneal=compound
self_guidance.scale=1``, with ``maskgit.decoded_confidence=finite maskgit.count_precision=float32``
for open-muse's sampler exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from migbench.methods.self_guidance.adapter import TOASTAdapter

from migbench.checkpoints import CheckpointSpec, load_state, load_strict

COMMIT = "33e139a5aeae8a061d1d7eb7f85b370e293910a9"
REPO = "https://github.com/JiwanHur/UnlockMGM"
HUB = "https://huggingface.co/HURJIWAN/UnlockMGM/resolve/main"
LICENCE = ("no licence file in JiwanHur/UnlockMGM or on HURJIWAN/UnlockMGM (all rights reserved by default): "
           "research use, do not redistribute; the backbone part is Google's MaskGIT (Apache-2.0)")
BACKBONE_KEYS = ("embed.*", "transformer_layers.*", "mlm_layer.*")
ADAPTER_KEYS = ("cls_anchor_gen.*", "top_down_transform", "decoders.*")
FACTOR = 16  # tg_factor of configs/ft_{256,512}_toast_cls_b256_corr.yaml
ADAPTERS = {256: "unlockmgm_toast_256", 512: "unlockmgm_toast_512"}
BACKBONES = {256: "unlockmgm_maskgit_256", 512: "unlockmgm_maskgit_512"}
BACKBONE_LISTINGS = {256: "migbench.backbones.openmuse:keys/maskgit_transformer.json",
                     512: "migbench.backbones.openmuse:keys/maskgit_transformer_512.json"}


def _manual(px: int) -> str:
    return (f"{HUB}/UnlockMGM_imagenet_{px}.zip (unzip; import its checkpoint-50000/ema_model/pytorch_model.bin)")


CHECKPOINTS: tuple[CheckpointSpec, ...] = tuple(
    spec for px in (256, 512) for spec in (
        CheckpointSpec(name=ADAPTERS[px], source=f"{HUB}/UnlockMGM_imagenet_{px}.zip", licence=LICENCE,
                       ignore=BACKBONE_KEYS, listing="migbench.backbones.openmuse:keys/toast_adapter.json",
                       manual=_manual(px)),
        CheckpointSpec(name=BACKBONES[px], source=f"{HUB}/UnlockMGM_imagenet_{px}.zip", licence=LICENCE,
                       ignore=ADAPTER_KEYS, listing=BACKBONE_LISTINGS[px], manual=_manual(px)),
    ))
RELEASED = tuple(ADAPTERS.values())  # weights names read from the checkpoint cache


def release_adapter(state: Mapping[str, torch.Tensor], num_classes: int, width: int, depth: int) -> TOASTAdapter:
    """Upstream's TOAST part ``state`` in a :class:`TOASTAdapter` (``factor`` read from
    ``cls_anchor_gen.mlp_f.weight``), loaded strictly; eval mode, gradients off."""
    factor = state["cls_anchor_gen.mlp_f.weight"].shape[-1] if "cls_anchor_gen.mlp_f.weight" in state else FACTOR
    adapter = TOASTAdapter(num_classes, width, depth, factor, null_class=False, signal_bias=True)
    load_strict(adapter, dict(state), "self-guidance adapter")
    return adapter.eval().requires_grad_(False)


def load_release(name: str, num_classes: int, width: int, depth: int) -> TOASTAdapter:
    """The imported released adapter ``name`` (one of :data:`RELEASED`)."""
    return release_adapter(load_state(name)[0], num_classes, width, depth)
