"""The contracts between backbones, tokenizers and methods.

Nothing here knows a specific method or backbone. Shapes: B batch, N image tokens, L = N (+1 when
the backbone carries a class token), d hidden width, K codebook size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import torch

NULL_LABEL = -1  # a label value meaning "no class": the backbone maps it to its null class


@dataclass(frozen=True)
class VocabLayout:
    """Where things sit in a backbone's input vocabulary (data, never an assumption of the sampler).

    Image codes are ``0 .. codebook_size-1``. ``mask_id`` marks a masked image position. Class c
    is input id ``class_offset + c``; ``null_class_id`` is the "no class" id used for CFG's
    unconditional branch (equal to ``mask_id`` for eMIGM's "CFG with mask"). ``class_position``
    says whether the class token is prepended ("first"), appended ("last") or absent ("none").
    """

    codebook_size: int
    mask_id: int
    num_classes: int
    class_offset: int
    null_class_id: int
    vocab_size: int
    class_position: Literal["first", "last", "none"] = "first"

    def __post_init__(self) -> None:
        ids = [self.mask_id, self.class_offset, self.class_offset + self.num_classes - 1, self.null_class_id]
        if self.mask_id < self.codebook_size or max(ids) >= self.vocab_size:
            raise ValueError(f"inconsistent vocabulary layout: {self}")

    def class_ids(self, labels: torch.Tensor) -> torch.Tensor:
        """Input ids (B,) of the class tokens for ``labels`` (B,), NULL_LABEL -> null class.

        Labels are validated once per run where they enter (``generate`` checks the whole label
        vector; trainers read dataset labels). Here only ``torch._assert_async`` guards the range:
        a RuntimeError on the CPU, a device-side assert on CUDA, and never a host sync (which
        would stall every forward and break a ``torch.compile`` graph)."""
        in_range = ((labels >= NULL_LABEL) & (labels < self.num_classes)).all()
        torch._assert_async(in_range, f"labels must lie in [0, {self.num_classes}) or be NULL_LABEL={NULL_LABEL}")
        null = torch.full_like(labels, self.null_class_id)
        return torch.where(labels == NULL_LABEL, null, labels + self.class_offset)


@dataclass
class HookContext:
    """What a hook may read about the forward pass it runs in.

    ``ids`` (B, N) image-token ids with ``mask_id`` at masked positions; ``labels`` (B,);
    ``token_slice`` selects the image positions of the (B, L, d) hidden sequence; ``branch`` names
    the sampler branch ("main", "uncond", ...) or "train"; ``backbone`` is the module running.
    """

    ids: torch.Tensor
    labels: torch.Tensor
    token_slice: slice
    branch: str
    backbone: torch.nn.Module
    extras: dict[str, object] = field(default_factory=dict)

    @property
    def masked(self) -> torch.Tensor:
        """(B, N) bool: True where the image token is masked."""
        return self.ids == self.backbone.layout.mask_id


Hook = Callable[[torch.Tensor, HookContext], torch.Tensor]


class HookSet:
    """Ordered hooks per site. ``hooks(site, x, ctx)`` runs them in order and returns the new x.

    Sites of a backbone with ``depth`` blocks: ``embed``, ``block_in.{i}``, ``attn_value.{i}``,
    ``block_out.{i}``, ``final_hidden``, ``logits``.
    """

    def __init__(self) -> None:
        self._hooks: dict[str, list[tuple[str, Hook]]] = {}

    def add(self, site: str, hook: Hook, owner: str = "") -> None:
        self._hooks.setdefault(site, []).append((owner, hook))

    def __call__(self, site: str, x: torch.Tensor, ctx: HookContext) -> torch.Tensor:
        for _, hook in self._hooks.get(site, ()):
            x = hook(x, ctx)
        return x

    def sites(self) -> list[str]:
        return sorted(self._hooks)

    def signature(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """Identity of the installed hooks: equal signatures give equal forward passes."""
        return tuple((site, tuple(id(h) for _, h in self._hooks[site])) for site in self.sites())

    def __bool__(self) -> bool:
        return bool(self._hooks)


def hook_sites(depth: int) -> list[str]:
    """Every hook site of a ``depth``-block backbone, in call order."""
    sites = ["embed"]
    for i in range(depth):
        sites += [f"block_in.{i}", f"attn_value.{i}", f"block_out.{i}"]
    return sites + ["final_hidden", "logits"]


@dataclass
class Prediction:
    """One backbone pass: ``logits`` (B, N, K) over image codes; ``hidden`` (B, N, d) final hidden
    (after the final norm); ``last_block`` (B, L, d) the last block's output before the final norm,
    every position (self-guidance's TOAST selection reads it)."""

    logits: torch.Tensor
    hidden: torch.Tensor
    last_block: torch.Tensor | None = None

    def rows(self, start: int, stop: int) -> Prediction:
        """The prediction of batch rows [start, stop)."""
        last = None if self.last_block is None else self.last_block[start:stop]
        return Prediction(self.logits[start:stop], self.hidden[start:stop], last)


@runtime_checkable
class Tokenizer(Protocol):
    """A frozen image tokenizer: images in [0, 1] (B, C, H, W) <-> ids (B, N)."""

    @property
    def codebook_size(self) -> int: ...

    @property
    def grid(self) -> tuple[int, int]: ...

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, ids: torch.Tensor) -> torch.Tensor: ...

    def codebook(self) -> torch.Tensor: ...


@runtime_checkable
class Backbone(Protocol):
    """A bidirectional token predictor with declared vocabulary and explicit hook sites."""

    layout: VocabLayout
    depth: int
    width: int

    @property
    def seq_len(self) -> int: ...

    def token_embeddings(self) -> torch.Tensor: ...

    def __call__(self, ids: torch.Tensor, labels: torch.Tensor, hooks: HookSet | None = None,
                 branch: str = "main") -> Prediction: ...
