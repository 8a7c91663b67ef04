"""``autonat``: AutoNAT-L (LeapLabTHU/ImprovedNAT, Ni et al. 2024), the backbone of KA-MIG's
headline rows, over the MAGE VQGAN.

Stacks: ``autonat_l`` (256 px, 16x16 tokens): the released U-ViT (:class:`~.uvit.UViT`: 12
in-blocks, a mid block and 12 out-blocks with long skips, the class from its own context table
with null class 1000, head tied to the token embeddings) over the released MAGE VQGAN
(:class:`~migbench.backbones.common.maskgit_vqgan.MaskGitVQGAN`, Google MaskGIT's network under
MAGE's names; images in [0, 1]); and ``autonat_tiny``, the same modules tiny and random, for
contract tests. Their data's ``token_maps`` tokenise ``$MIGBENCH_IMAGENET`` with the stack's
tokenizer as KA-MIG does (:mod:`~migbench.backbones.common.imagenet_tokens`), for KA-MIG's graph
builder and trainer.

The released files are Google Drive downloads (:data:`CHECKPOINTS`): download by hand, then
``migbench import NAME PATH``; they load strictly under upstream's key names.
``random_weights=True`` builds ``autonat_l`` with seeded random weights instead (recorded as such
in ``weight_hashes``): for trying the pipeline, never for numbers.
"""

from __future__ import annotations

import dataclasses

from migbench.backbones.autonat.uvit import UViT, UViTConfig
from migbench.backbones.common.maskgit_vqgan import MaskGitVQGAN, MaskGitVQGANConfig
from migbench.backbones.common.stacks import checkpoint_stack, tiny_stack

from migbench.api import Stack
from migbench.checkpoints import CheckpointSpec
from migbench.config import RANDOM_PARTS

# No revision or hash can be pinned for a Drive file from here (no network): both sha256s are
# recorded at import and enter every run hash; the committed key listings identify the files.
CHECKPOINTS: tuple[CheckpointSpec, ...] = (
    CheckpointSpec(name="autonat_l", source="https://drive.google.com/file/d/12NN62Vg1DiOd-3sWkEnBQRIBBbuiVkNl/view",
                   licence="MIT (LeapLabTHU/ImprovedNAT LICENSE)",
                   listing="migbench.backbones.autonat:keys/uvit.json"),
    CheckpointSpec(name="mage_vqgan", source="https://drive.google.com/file/d/13S_unB87n6KKuuMdyMnyExW0G1kplTbP/view",
                   licence="MAGE's VQGAN weights (LTH14/mage), as linked by ImprovedNAT and KA-MIG; see MAGE's licence",
                   container="state_dict", container_optional=True,
                   listing="migbench.backbones.common:keys/maskgit_vqgan.json"),
)


# KA-MIG's released adapter with the class-position graph from its Drive link (the graph built
# by our builder is the alternative: `ka_mig.graphs=<manifest name>`); random-weights stacks take
# seeded random parts instead.
KA_MIG_RELEASED = {"ka_mig": {"weights": "ka_mig_autonat_l", "graphs": "ka_mig_graph_p"}}
KA_MIG_RANDOM = {"ka_mig": {"weights": RANDOM_PARTS, "graphs": RANDOM_PARTS}}


def _stack(name: str, checkpoint: str, random_weights: bool, seed: int) -> Stack:
    """The U-ViT ``checkpoint`` over the MAGE VQGAN (files or random weights)."""
    return checkpoint_stack(name, lambda: (MaskGitVQGAN(MaskGitVQGANConfig(), image_size=256), UViT(UViTConfig())),
                            256, (checkpoint, "mage_vqgan"), random_weights, seed,
                            KA_MIG_RANDOM if random_weights else KA_MIG_RELEASED)


def autonat_l(random_weights: bool = False, seed: int = 0) -> Stack:
    """The released AutoNAT-L (``nnet_ema.pth``) over the released MAGE VQGAN: 256 tokens of
    1,024 codes; the AutoNAT rows of KA-MIG's tables."""
    return _stack("autonat_l", "autonat_l", random_weights, seed)


def autonat_l_kamig(random_weights: bool = False, seed: int = 0) -> Stack:
    """The backbone part of KA-MIG's released ``graph_nnet_ema.pth`` (its EMA of the model it
    fine-tuned, the backbone frozen, so equal to ``nnet_ema.pth`` up to the EMA's last bits)
    over the same VQGAN: the backbone upstream's ``generate_npz.py`` samples KA-MIG's rows with."""
    return _stack("autonat_l_kamig", "ka_mig_autonat_l_backbone", random_weights, seed)


def autonat_tiny(seed: int = 0) -> Stack:
    """Both modules at their tiny configurations, random (same seed, same weights): 32 px ->
    16x16 tokens of 64 codes; the family's contract-test stack, on ImageNet's first classes."""
    vq_config = MaskGitVQGANConfig.tiny()
    return tiny_stack("autonat_tiny", lambda: (MaskGitVQGAN(vq_config, image_size=32),
                                               UViT(dataclasses.replace(UViTConfig.tiny(), side=16,
                                                                        codebook_size=vq_config.n_embed))), 32, seed)
