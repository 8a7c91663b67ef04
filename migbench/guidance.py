"""Guidance terms and the one rule that combines them.

Every guidance term contributes a reference branch and a scale. With l_main the logits of the
main (conditional) pass and l_k those of term k's reference branch,

    l = l_main + sum_k s_k(step) * (l_main - l_k)                                  (1)

CFG with scale w is (1 + w) l_c - w l_u (Chang et al. / MaskGIT convention; MUSE and MAR write
u + w'(c - u), i.e. w = w' - 1). Self-guidance is l_aux + (1 + s)(l - l_aux) = (1 + s) l - s l_aux
(Hur et al. 2024, eq. 6), the same shape. A term whose scale is 0 at a step is not evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from migbench.api import HookSet, Prediction


@dataclass(frozen=True)
class StepInfo:
    """Where the sampler is: step k of T (0-based), going from time t to time s < t.

    Times follow :mod:`migbench.schedules` (1 = fully masked). ``masked_before``/``masked_after``
    count the masked tokens per image before and after the step (N = ``num_tokens``).
    """

    step: int
    num_steps: int
    t: float
    s: float
    masked_before: int
    masked_after: int
    num_tokens: int


# A branch transforms the main inputs: (ids (B,N), labels (B,)) -> (ids, labels).
InputsFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# A dependent branch runs after main: (backbone, ids, labels, main prediction, hooks) -> logits (B,N,K).
DependentFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, Prediction, HookSet], torch.Tensor]


@dataclass
class GuidanceTerm:
    """One guidance term: its reference branch and its scale per step.

    An *independent* branch (``inputs`` set) is batched with the main pass: CFG's unconditional
    pass. A *dependent* branch (``dependent`` set) runs after main and may read main's
    prediction: self-guidance's auxiliary pass. ``scale_at(info)`` may return 0 to skip the pass;
    with ``run_unguided`` the pass runs at scale 0 too and is weighed by 0 (an upstream that
    always runs it, for its NFE: TiTok's power-cosine CFG from step 0, fidelity finding F10).
    """

    name: str
    owner: str
    scale_at: Callable[[StepInfo], float]
    inputs: InputsFn | None = None
    dependent: DependentFn | None = None
    run_unguided: bool = False

    def __post_init__(self) -> None:
        if (self.inputs is None) == (self.dependent is None):
            raise ValueError(f"guidance term {self.name!r} needs exactly one of inputs/dependent")


def combine(main: torch.Tensor, references: list[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """Equation (1): main (B,N,K) + sum of scale * (main - reference) over active terms."""
    out = main
    for scale, reference in references:
        out = out + scale * (main - reference)
    return out
