"""Pieces shared by the public backbone families: not a family (no stack, no registry line).

``imagenet``: ImageNet's class names and :class:`~migbench.api.DatasetSpec`, ADM's centre crop,
and the reader of an ImageNet folder (train layout, or val in wnid subfolders or flat with
Kaggle's label file) that the evaluator streams reference features from.

``maskgit_vqgan``: the Google MaskGIT VQGAN (MAGE's weights, AutoNAT's tokenizer) under MAGE's
key names, with the rename to open-muse's ``MaskGitVQGAN`` names (TiTok's pixel decoder).
"""
