"""The one sampling loop, its slots and how methods install into it.

A sampler is built from a list of methods; each method's ``install(builder, config)`` adds
hooks at backbone sites, guidance terms, logit processors, or takes one of four slots:

- ``schedule``:  ``plan(num_tokens, generator) -> list[StepInfo]``, how many tokens stay masked
  after each step;
- ``token_sampler``: ``(logits (B,N,K), state) -> (tokens (B,N), logp (B,N))``;
- ``scorer``: ``(candidates (B,N), logp (B,N), state) -> scores (B,N)``, higher = keep;
- ``selector``: ``(candidates, scores, state) -> ids (B,N)`` after the step, ``mask_id`` where
  masked (``state.tokens`` holds the fresh samples at every position, for selectors that
  rewrite revealed tokens, as Halton-MaskGIT does).

The base method (``maskgit``) claims all four *weakly*; another method may take a weakly held
slot, but two methods claiming one slot is an error naming both. Per step the loop

1. runs the main branch and every active guidance term's independent branch in one batched
   backbone call (branches with different hooks are called separately), then dependent branches;
2. combines them with :func:`migbench.guidance.combine`;
3. applies the logit processors in install order (``state.guided`` keeps the logits before
   them, for a scorer that reads the untempered distribution, as AutoNAT's does;
   ``state.processed`` those after them, for a scorer that reads the chosen logit, as TiTok's does);
4. samples tokens, forms the candidate canvas (fresh tokens at masked positions, kept tokens
   elsewhere), scores it, and lets the selector return the canvas after the step.

Every backbone or auxiliary pass counts one NFE per image; extra networks (a critic) count
through :meth:`SampleState.count`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from migbench.api import Hook, HookSet, Prediction, Stack
from migbench.config import AUTO
from migbench.guidance import GuidanceTerm, StepInfo, combine

SLOTS = ("schedule", "token_sampler", "scorer", "selector")
ALL_BRANCHES = "*"


class SlotConflictError(ValueError):
    """Two methods claimed the same sampler slot."""


@dataclass
class SampleState:
    """What slots and processors see at one step. ids/masked are (B, N); labels (B,)."""

    ids: torch.Tensor
    masked: torch.Tensor
    labels: torch.Tensor
    info: StepInfo
    generator: torch.Generator
    backbone: torch.nn.Module
    nfe: dict[str, int]
    main: Prediction | None = None
    guided: torch.Tensor | None = None  # (B, N, K) float32: main and guidance combined, before the processors
    processed: torch.Tensor | None = None  # (B, N, K): ``guided`` after the processors, what tokens are drawn from
    tokens: torch.Tensor | None = None
    memory: dict[str, Any] = field(default_factory=dict)  # persists across the steps of one batch

    def count(self, kind: str, passes: int = 1) -> None:
        """Record ``passes`` network evaluations per image of ``kind`` (e.g. "critic")."""
        self.nfe[kind] = self.nfe.get(kind, 0) + passes


class Schedule(Protocol):
    """The ``schedule`` slot: every step's :class:`StepInfo`, decided before the first step.

    ``generator`` is the batch's generator, for schedules whose counts are random but shared by
    the batch (eMIGM's ancestral reveal). ``steps`` is the owner's step-count knob: every step
    reveals at least one token, so it lies in [1, the backbone's number of tokens]."""

    steps: int

    def plan(self, num_tokens: int, generator: torch.Generator) -> list[StepInfo]: ...


TokenSampler = Callable[[torch.Tensor, SampleState], tuple[torch.Tensor, torch.Tensor]]
Scorer = Callable[[torch.Tensor, torch.Tensor, SampleState], torch.Tensor]
Selector = Callable[[torch.Tensor, torch.Tensor, SampleState], torch.Tensor]
Processor = Callable[[torch.Tensor, SampleState], torch.Tensor]


@dataclass
class _Claim:
    owner: str
    value: Any
    weak: bool


class SamplerBuilder:
    """Collects what methods install; :meth:`build` checks it and returns a :class:`Sampler`."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.backbone = stack.backbone
        self._slots: dict[str, _Claim] = {}
        self._hooks: list[tuple[str, Hook, str, tuple[str, ...] | str]] = []
        self._head: tuple[torch.nn.Module, str, tuple[str, ...] | str] | None = None
        self.guidance: dict[str, GuidanceTerm] = {}
        self._processors: list[tuple[str, Processor]] = []
        self.extra_parameters: dict[str, dict[str, int]] = {}

    def claim(self, slot: str, value: Any, owner: str, weak: bool = False) -> None:
        """Take ``slot``. A weak claim (the base method's) yields to any later strong claim."""
        if slot not in SLOTS:
            raise ValueError(f"unknown slot {slot!r}; slots are {SLOTS}")
        held = self._slots.get(slot)
        if held is not None and not held.weak:
            raise SlotConflictError(f"slot {slot!r} is claimed by both {held.owner!r} and {owner!r}; "
                                    "remove one of them from the methods list")
        if held is not None and weak:
            raise SlotConflictError(f"slot {slot!r} is already held by {held.owner!r}; "
                                    f"{owner!r} may not claim it weakly")
        self._slots[slot] = _Claim(owner, value, weak)

    def owner(self, slot: str) -> str | None:
        """The method holding ``slot`` (None while free)."""
        held = self._slots.get(slot)
        return held.owner if held else None

    def add_hook(self, site: str, hook: Hook, owner: str,
                 branches: tuple[str, ...] | str = ALL_BRANCHES) -> None:
        """Run ``hook`` at backbone ``site`` on the named branches (default: every branch)."""
        self._hooks.append((site, hook, owner, branches))

    def replace_head(self, head: torch.nn.Module, owner: str,
                     branches: tuple[str, ...] | str = ALL_BRANCHES) -> None:
        """Apply ``head`` instead of the backbone's own on the named branches (KA-MIG's
        fine-tuned copy); a second method replacing it is an error naming both."""
        if self._head is not None:
            raise SlotConflictError(f"the backbone head is replaced by both {self._head[1]!r} and {owner!r}")
        self._head = (head, owner, branches)

    def weights_name(self, owner: str, knob: str, value: str) -> str:
        """``value`` of ``owner.knob`` as a weights name: ``"auto"`` here means the stack names no
        weights of ``owner`` (:meth:`Recipe.bind` resolved every other), a one-line error."""
        if value == AUTO:
            raise ValueError(f"{owner}.{knob}=auto: stack {self.stack.name} has no {owner} weights; "
                             f"set {owner}.{knob}=NAME (a manifest name, `migbench info` lists them)")
        return value

    def add_guidance(self, term: GuidanceTerm) -> None:
        if term.name in self.guidance or term.name == "main":
            raise ValueError(f"guidance term {term.name!r} installed twice")
        self.guidance[term.name] = term

    def add_processor(self, processor: Processor, owner: str) -> None:
        self._processors.append((owner, processor))

    def add_parameters(self, owner: str, online: int = 0, precomputed: int = 0) -> None:
        """Declare a method's extra parameters (cost columns): run per pass vs folded into constants."""
        self.extra_parameters[owner] = {"online": online, "precomputed": precomputed}

    def hooks_for(self, branch: str) -> HookSet:
        hooks = HookSet()
        for site, hook, owner, branches in self._hooks:
            if branches == ALL_BRANCHES or branch in branches:
                hooks.add(site, hook, owner)
        if self._head is not None and (self._head[2] == ALL_BRANCHES or branch in self._head[2]):
            hooks.replace_head(self._head[0], self._head[1])
        return hooks

    def build(self) -> Sampler:
        """The sampler; fails when a slot is empty or the schedule's step count does not fit the
        backbone's number of tokens."""
        missing = [slot for slot in SLOTS if slot not in self._slots]
        if missing:
            raise ValueError(f"no method fills the slots {missing}; include the base method 'maskgit'")
        schedule, tokens = self._slots["schedule"], self.backbone.seq_len
        if not 1 <= schedule.value.steps <= tokens:
            raise ValueError(f"{schedule.owner}.steps = {schedule.value.steps} must lie in [1, {tokens}]: "
                             f"every step reveals at least one of the backbone's {tokens} tokens")
        return Sampler(self)


class Sampler:
    """Runs the loop for one batch: ``sampler(labels (B,), generator) -> ids (B, N)``."""

    def __init__(self, builder: SamplerBuilder) -> None:
        self.backbone = builder.backbone
        slots = {name: claim.value for name, claim in builder._slots.items()}
        self.schedule: Schedule = slots["schedule"]
        self.token_sampler: TokenSampler = slots["token_sampler"]
        self.scorer: Scorer = slots["scorer"]
        self.selector: Selector = slots["selector"]
        self.terms = list(builder.guidance.values())
        self.processors = [p for _, p in builder._processors]
        self.extra_parameters = dict(builder.extra_parameters)
        branch_names = ["main", *(t.name for t in self.terms)]
        self.hooks = {name: builder.hooks_for(name) for name in branch_names}
        self.nfe: dict[str, int] = {}
        self.images = 0

    def compile_backbone(self) -> None:
        """Run this sampler's backbone passes through ``torch.compile(dynamic=False)``: one graph
        per batch shape and hook set (the forward has no graph break and no host sync). The
        module itself is left as it is; compiled kernels may round differently from eager ones."""
        self.backbone = torch.compile(self.backbone, dynamic=False)

    def nfe_per_image(self) -> dict[str, float]:
        """Passes per image so far, by kind ("backbone", "critic", ...), and their total."""
        per = {k: v / max(1, self.images) for k, v in self.nfe.items()}
        return {**per, "total": sum(per.values())}

    def _independent(self, ids: torch.Tensor, labels: torch.Tensor,
                     active: list[GuidanceTerm]) -> dict[str, Prediction]:
        """Main and the independent reference branches; same-hook branches share one call
        (whose ``HookContext.branch`` names the group's first branch)."""
        inputs = {"main": (ids, labels)}
        inputs.update({t.name: t.inputs(ids, labels) for t in active if t.inputs is not None})
        groups: dict[tuple, list[str]] = {}
        for name in inputs:
            groups.setdefault(self.hooks[name].signature(), []).append(name)
        out: dict[str, Prediction] = {}
        b = ids.shape[0]
        for names in groups.values():
            pred = self.backbone(torch.cat([inputs[n][0] for n in names]),
                                 torch.cat([inputs[n][1] for n in names]),
                                 hooks=self.hooks[names[0]], branch=names[0])
            for i, name in enumerate(names):
                out[name] = pred.rows(i * b, (i + 1) * b)
        return out

    @torch.no_grad()
    def __call__(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = self.backbone.seq_len
        mask_id = self.backbone.layout.mask_id
        device = labels.device
        ids = torch.full((labels.shape[0], n), mask_id, dtype=torch.long, device=device)
        masked = torch.ones_like(ids, dtype=torch.bool)
        passes = {"backbone": 0}
        memory: dict[str, Any] = {}
        for info in self.schedule.plan(n, generator):
            state = SampleState(ids=ids, masked=masked, labels=labels, info=info,
                                generator=generator, backbone=self.backbone, nfe=passes, memory=memory)
            scales = [(term, term.scale_at(info)) for term in self.terms]
            active = [(term, s) for term, s in scales if s != 0.0 or term.run_unguided]
            preds = self._independent(ids, labels, [t for t, _ in active])
            state.main = preds["main"]
            refs: list[tuple[float, torch.Tensor]] = []
            for term, scale in active:
                if term.dependent is not None:
                    logits = term.dependent(self.backbone, ids, labels, state.main, self.hooks[term.name])
                else:
                    logits = preds[term.name].logits
                refs.append((scale, logits.float()))
            state.count("backbone", 1 + len(active))
            logits = state.guided = combine(state.main.logits.float(), refs)
            for processor in self.processors:
                logits = processor(logits, state)
            state.processed = logits
            state.tokens, logp = self.token_sampler(logits, state)
            candidates = torch.where(masked, state.tokens, ids)
            scores = self.scorer(candidates, logp, state)
            ids = self.selector(candidates, scores, state)
            masked = ids == mask_id
        for kind, count in passes.items():
            self.nfe[kind] = self.nfe.get(kind, 0) + count * labels.shape[0]
        self.images += labels.shape[0]
        return ids
