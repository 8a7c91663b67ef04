"""Class-balanced label lists: which class each sample of a run is drawn for."""

from __future__ import annotations

import torch


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """Class labels (n,) int64 cycling 0, 1, ..., C-1, 0, 1, ...: exactly balanced when C | n.

    Cycling (rather than blocks of one class) keeps every fixed-size sampling batch balanced too.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return torch.arange(n, dtype=torch.long) % num_classes
