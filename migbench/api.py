"""The contracts between backbones, tokenizers and methods.

Nothing here knows a specific method or backbone. Shapes: B batch, N image tokens, L = N (+1 when
the backbone carries a class token), d hidden width, K codebook size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import torch

NULL_LABEL = -1  # a label value meaning "no class": the backbone maps it to its null class
BLANK_LABEL = -2  # a label value meaning "the class slot shows [MASK]" (self-guidance's auxiliary pass)


@dataclass(frozen=True)
class VocabLayout:
    """Where things sit in a backbone's input vocabulary (data, never an assumption of the sampler).

    Image codes are ``0 .. codebook_size-1``. ``mask_id`` marks a masked image position. Class c
    is input id ``class_offset + c``; ``null_class_id`` is the "no class" id used for CFG's
    unconditional branch (equal to ``mask_id`` for eMIGM's "CFG with mask"). ``class_position``
    says whether the class token is prepended ("first"), appended ("last") or absent ("none").
    ``blank_class_id`` is the id the class slot takes for BLANK_LABEL: ``mask_id`` by default
    (the slot shows [MASK], as self-guidance's auxiliary pass wants); a backbone whose class
    comes from a separate table sets its null class instead and says so in ``describe()``.
    """

    codebook_size: int
    mask_id: int
    num_classes: int
    class_offset: int
    null_class_id: int
    vocab_size: int
    class_position: Literal["first", "last", "none"] = "first"
    blank_class_id: int | None = None

    @property
    def blank_id(self) -> int:
        """The class-slot id of BLANK_LABEL."""
        return self.mask_id if self.blank_class_id is None else self.blank_class_id

    def __post_init__(self) -> None:
        ids = [self.mask_id, self.class_offset, self.class_offset + self.num_classes - 1, self.null_class_id,
               self.blank_id]
        if self.mask_id < self.codebook_size or max(ids) >= self.vocab_size:
            raise ValueError(f"inconsistent vocabulary layout: {self}")

    def class_ids(self, labels: torch.Tensor) -> torch.Tensor:
        """Input ids (B,) of the class tokens for ``labels`` (B,): NULL_LABEL -> null class,
        BLANK_LABEL -> ``blank_id``.

        Labels are validated once per run where they enter (``generate`` checks the whole label
        vector; trainers read dataset labels). Here only ``torch._assert_async`` guards the range:
        a RuntimeError on the CPU, a device-side assert on CUDA, and never a host sync (which
        would stall every forward and break a ``torch.compile`` graph)."""
        in_range = ((labels >= BLANK_LABEL) & (labels < self.num_classes)).all()
        torch._assert_async(in_range, f"labels must lie in [0, {self.num_classes}) or be NULL_LABEL={NULL_LABEL} "
                                      f"or BLANK_LABEL={BLANK_LABEL}")
        ids = torch.where(labels == NULL_LABEL, self.null_class_id, labels + self.class_offset)
        return torch.where(labels == BLANK_LABEL, self.blank_id, ids)


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
    """Ordered hooks per site, and at most one head override.

    ``hooks(site, x, ctx)`` runs the site's hooks in order and returns the new x. Sites of a
    backbone with ``depth`` blocks: ``embed``, ``block_in.{i}``, ``attn_value.{i}``,
    ``block_out.{i}``, ``final_hidden``, ``logits``. ``head(default)`` is the module a backbone
    must apply to its final image hidden states: ``default`` (its own head) unless a method
    replaced it (KA-MIG's fine-tuned copy).
    """

    def __init__(self) -> None:
        self._hooks: dict[str, list[tuple[str, Hook]]] = {}
        self._head: tuple[str, torch.nn.Module] | None = None

    def add(self, site: str, hook: Hook, owner: str = "") -> None:
        self._hooks.setdefault(site, []).append((owner, hook))

    def replace_head(self, head: torch.nn.Module, owner: str) -> None:
        """Apply ``head`` instead of the backbone's own; two owners may not both replace it."""
        if self._head is not None and self._head[0] != owner:
            raise ValueError(f"the head is replaced by both {self._head[0]!r} and {owner!r}")
        self._head = (owner, head)

    def head(self, default: torch.nn.Module) -> torch.nn.Module:
        """The head to apply: the replacement, else ``default``."""
        return default if self._head is None else self._head[1]

    def __call__(self, site: str, x: torch.Tensor, ctx: HookContext) -> torch.Tensor:
        for _, hook in self._hooks.get(site, ()):
            x = hook(x, ctx)
        return x

    def sites(self) -> list[str]:
        return sorted(self._hooks)

    def signature(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """Identity of the installed hooks and head: equal signatures give equal forward passes."""
        head = (("head", (id(self._head[1]),)),) if self._head is not None else ()
        return tuple((site, tuple(id(h) for _, h in self._hooks[site])) for site in self.sites()) + head

    def __bool__(self) -> bool:
        return bool(self._hooks) or self._head is not None


_NO_HOOKS = HookSet()  # what a forward called without hooks runs with (never added to)


def forward_context(backbone: object, ids: torch.Tensor, labels: torch.Tensor, hooks: HookSet | None,
                    branch: str, token_slice: slice) -> tuple[HookSet, HookContext]:
    """The hooks (an empty set for None) and the :class:`HookContext` of a backbone forward over
    ``ids`` (B, N) with ``labels`` (B,), N = ``backbone.seq_len``, after checking both shapes
    (one-line ValueErrors): the prologue every backbone's ``forward`` shares."""
    n = backbone.seq_len  # type: ignore[attr-defined]
    if ids.dim() != 2 or ids.shape[1] != n:
        raise ValueError(f"ids must have shape (B, {n}), got {tuple(ids.shape)}")
    if labels.shape != ids.shape[:1]:
        raise ValueError(f"labels must have shape ({ids.shape[0]},), got {tuple(labels.shape)}")
    ctx = HookContext(ids=ids, labels=labels, token_slice=token_slice, branch=branch, backbone=backbone)
    return (hooks if hooks is not None else _NO_HOOKS), ctx


def hook_sites(depth: int) -> list[str]:
    """Every hook site of a ``depth``-block backbone, in call order."""
    sites = ["embed"]
    for i in range(depth):
        sites += [f"block_in.{i}", f"attn_value.{i}", f"block_out.{i}"]
    return sites + ["final_hidden", "logits"]


@dataclass
class Prediction:
    """One backbone pass: ``logits`` (B, N, K) over the K image codes only (a backbone whose head
    scores more ids slices them away); ``last_block`` (B, L, d) the last block's output before
    the final norm, every position (self-guidance's TOAST selection reads it)."""

    logits: torch.Tensor
    last_block: torch.Tensor | None = None

    def rows(self, start: int, stop: int) -> Prediction:
        """The prediction of batch rows [start, stop)."""
        last = None if self.last_block is None else self.last_block[start:stop]
        return Prediction(self.logits[start:stop], last)


@runtime_checkable
class Tokenizer(Protocol):
    """A frozen image tokenizer: images in [0, 1] (B, C, H, W) <-> ids (B, N), N = prod(token_shape).

    ``token_shape`` is the layout of the N tokens: ``(16, 16)`` for a 2-D grid (row-major ids),
    ``(64,)`` for 1-D tokens (TiTok); ``image_shape`` is (C, H, W) of decoded images.

    Optional: ``decode_raw(ids)``, the decoder's output before ``decode`` clamps it, in any affine
    scale (per-image min-max normalisation, :func:`migbench.images.decode_images`, reads it)."""

    @property
    def codebook_size(self) -> int: ...

    @property
    def token_shape(self) -> tuple[int, ...]: ...

    @property
    def image_shape(self) -> tuple[int, int, int]: ...

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, ids: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Backbone(Protocol):
    """A bidirectional token predictor with declared vocabulary, capabilities and hook sites.

    ``depth`` counts the hooked blocks in call order; ``seq_len`` is N. ``forward`` fires every
    site of :func:`hook_sites` once and applies ``hooks.head(self.head)`` to the final image
    hidden states (B, N, d), so a method may replace the head. Labels are class ids,
    NULL_LABEL (the null class) or BLANK_LABEL (the class slot shows ``layout.blank_id``).

    Optional: ``fresh()``, an untrained network of the same architecture initialised as the
    family trains it (from the global RNG); Token-Critic training makes its critic from it and
    refuses a backbone without it."""

    layout: VocabLayout
    depth: int
    width: int
    head: torch.nn.Module

    @property
    def seq_len(self) -> int: ...

    def describe(self) -> dict[str, object]: ...

    def token_embeddings(self) -> torch.Tensor:
        """Input embeddings (K, d) of the K image codes (KA-MIG's graph node features)."""
        ...

    def value_projection(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Block ``index``'s attention value projection: weight (d, d) and bias (d,) or None,
        acting on the block's normalised input as at site ``attn_value.{index}``."""
        ...

    def __call__(self, ids: torch.Tensor, labels: torch.Tensor, hooks: HookSet | None = None,
                 branch: str = "main") -> Prediction: ...


TokenMaps = Callable[[str, "torch.device | str"], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class DatasetSpec:
    """What a stack's images are: classes, how they are evaluated, and where token maps come from.

    ``reference`` and ``extractor`` are the default reference set and feature extractor of the
    evaluator, by name (a suite may override both); ``references`` lists every reference the
    harness knows for this data; ``floors`` says whether the data and tokenizer quality floors
    can be computed (the data is at hand); ``token_maps(split, device)`` gives the ids (M, N)
    and labels (M,) of a split for the trainers, or is None where no data is available."""

    name: str
    class_names: tuple[str, ...]
    reference: str
    extractor: str
    references: tuple[str, ...] = ()
    floors: bool = False
    token_maps: TokenMaps | None = field(default=None, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


CAPABILITIES = {"grid2d": "image tokens on a 2-D grid (token_shape of length 2)"}


@dataclass
class Stack:
    """A tokenizer, a backbone and their data, with the sha256 of every weight file they came from.

    ``method_weights`` resolves a trained method's ``"auto"`` knobs on this stack:
    ``{"ka_mig": {"weights": "fmnist_ka_mig", ...}}``; a method without an entry must be given
    its weights by name."""

    name: str
    tokenizer: Tokenizer
    backbone: Backbone
    dataset: DatasetSpec
    weight_hashes: dict[str, str] = field(default_factory=dict)
    method_weights: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backbone.layout.num_classes != self.dataset.num_classes:
            raise ValueError(f"stack {self.name}: the backbone has {self.backbone.layout.num_classes} classes, "
                             f"the data {self.dataset.num_classes}")
        if math.prod(self.tokenizer.token_shape) != self.backbone.seq_len:
            raise ValueError(f"stack {self.name}: the tokenizer makes {self.tokenizer.token_shape} tokens, "
                             f"the backbone takes {self.backbone.seq_len}")

    @property
    def capabilities(self) -> frozenset[str]:
        """What methods may require of this stack (names of :data:`CAPABILITIES`)."""
        return frozenset({"grid2d"} if len(self.tokenizer.token_shape) == 2 else set())

    def require(self, method: str, needs: tuple[str, ...]) -> None:
        """Raise a one-line error naming ``method``, this stack and the first missing capability."""
        for need in needs:
            if need not in CAPABILITIES:
                raise ValueError(f"method {method} requires unknown capability {need!r}")
            if need not in self.capabilities:
                raise ValueError(f"method {method} needs {CAPABILITIES[need]}; stack {self.name} has "
                                 f"token_shape {tuple(self.tokenizer.token_shape)}")
