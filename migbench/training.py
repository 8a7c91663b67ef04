"""The one training loop every migbench model uses: resumable, step-seeded, mixed precision, accelerate.

Every random draw of step ``k`` comes from ``step_generator(seed, k)`` and every batch from
``batch_indices(n, batch, seed, k)``, so a run resumed from a checkpoint at step k produces the
same weights as an uninterrupted run. Checkpoints are written atomically (temp file + rename)
every ``checkpoint_every_s`` seconds and at the end; a crash loses at most that much work.

Device contract: the loop trains on the accelerator's device (this process's GPU where there is
one, else the CPU), :attr:`TrainLoop.device`. A trainer moves its frozen helper models there
once, before :meth:`TrainLoop.run`; its step function receives the device and moves each batch
there. Random draws stay on the per-step CPU generator and the drawn tensors are moved, so a CPU
run's numbers do not depend on whether a GPU exists elsewhere, and a GPU run uses the same draws.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm

from migbench import weights
from migbench.api import Stack
from migbench.precision import accelerate_mixed_precision
from migbench.precision import resolve as resolve_precision

StepFn = Callable[[torch.nn.Module, int, torch.Generator, torch.device],
                  tuple[torch.Tensor, dict[str, float]]]
"""``step_fn(model, step, generator, device)`` -> (loss, metrics) of one batch: ``generator`` is the
step's CPU generator (every random draw), ``device`` the model's device (batches go there)."""


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator whose state depends only on (seed, step)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def batch_indices(num_items: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices (batch_size,) of training step ``step``: epochs are seeded permutations, drop-last."""
    if batch_size > num_items:
        raise ValueError(f"batch_size {batch_size} exceeds the {num_items} training items")
    per_epoch = num_items // batch_size
    epoch, offset = divmod(step, per_epoch)
    perm = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    return perm[offset * batch_size:(offset + 1) * batch_size]


def stack_token_maps(stack: Stack, split: str, device: torch.device | str, trainer: str
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (M, N) and labels (M,) of ``split`` from ``stack``'s data (on the CPU; a missing
    cache is encoded on ``device``), or a one-line error naming ``trainer`` and the stack when its
    data gives no token maps."""
    if stack.dataset.token_maps is None:
        raise ValueError(f"{trainer}: stack {stack.name} has no token maps (its data "
                         f"{stack.dataset.name!r} gives none to train on)")
    return stack.dataset.token_maps(split, device)


def warmup_cosine(step: int, total: int, warmup: int, peak: float, floor: float = 0.0) -> float:
    """Learning rate: linear warm-up to ``peak`` over ``warmup`` steps, then cosine to ``floor``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainLoop:
    """Configuration of one training run."""

    name: str
    total_steps: int
    seed: int
    run_dir: Path
    lr_at: Callable[[int], float]
    precision: str = "auto"  # auto | bf16 | fp16 | fp32 (migbench.precision): auto is bf16 only where native
    checkpoint_every_s: float = 180.0
    log_every: int = 50
    grad_clip: float | None = 1.0
    stop_after: int | None = None  # testing aid: stop (with a checkpoint) before this step
    history: list[dict[str, float]] = field(default_factory=list)
    precision_used: str | None = field(default=None, init=False)  # bf16 | fp16 | fp32, set by run()

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"{self.name}: steps must be >= 1, got {self.total_steps}")

    @property
    def device(self) -> torch.device:
        """The device this loop trains on: the accelerator's (CUDA where available, else CPU).

        Known before :meth:`run`, so trainers can move frozen helper models there first.
        """
        return PartialState(cpu=not torch.cuda.is_available()).device

    @property
    def stops_early(self) -> bool:
        """Whether ``stop_after`` ends the run before ``total_steps`` (nothing is then published)."""
        return self.stop_after is not None and self.stop_after < self.total_steps

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "train.log"

    def run(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step_fn: StepFn,
            extra_state: Callable[[], dict] | None = None) -> torch.nn.Module:
        """Train ``model`` to ``total_steps``, resuming from ``checkpoint_path`` if present.

        ``step_fn(model, step, generator, device)`` returns (loss, metrics) for one batch (see
        :data:`StepFn`); it runs under the accelerator's autocast for ``precision``, frozen passes
        inside it included. Returns the unwrapped model, on :attr:`device`.
        """
        device = self.device
        self.precision_used = resolve_precision(self.precision, device)
        if self.precision_used == "fp16" and device.type == "cpu":
            raise ValueError(f"{self.name}: fp16 training needs a GPU (accelerate runs no fp16 autocast "
                             "on the CPU); use bf16 or fp32")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        accelerator = _accelerator(device, accelerate_mixed_precision(self.precision, device))
        start = self._resume(model, optimizer)
        model, optimizer = accelerator.prepare(model, optimizer)
        model.train()
        end = self.total_steps if self.stop_after is None else min(self.total_steps, self.stop_after)
        last_save = time.monotonic()
        bar = tqdm(range(start, end), initial=start, total=self.total_steps, desc=self.name,
                   disable=not accelerator.is_main_process, mininterval=2.0)
        with open(self.log_path, "a", encoding="utf-8") as log:
            for step in bar:
                for group in optimizer.param_groups:
                    group["lr"] = self.lr_at(step)
                torch.manual_seed(self.seed * 1_000_003 + step)
                with accelerator.autocast():
                    loss, metrics = step_fn(model, step, step_generator(self.seed, step), accelerator.device)
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                if self.grad_clip is not None:
                    accelerator.clip_grad_norm_(model.parameters(), self.grad_clip)
                optimizer.step()
                if step % self.log_every == 0 or step == end - 1:
                    row = {"step": step, "loss": float(loss.detach()), "lr": self.lr_at(step), **metrics}
                    self.history.append(row)
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k != "step"})
                if time.monotonic() - last_save > self.checkpoint_every_s:
                    self._save(accelerator, model, optimizer, step + 1, extra_state)
                    last_save = time.monotonic()
        self._save(accelerator, model, optimizer, end, extra_state)
        return accelerator.unwrap_model(model)

    def publish(self, name: str, model: torch.nn.Module, fresh: Callable[[], torch.nn.Module],
                measure: Callable[[torch.nn.Module], dict[str, float]], *, command: str,
                started: float, config: dict[str, Any], half: bool = True) -> torch.nn.Module:
        """:func:`migbench.weights.publish` of ``model`` after :meth:`run`: the reloaded copy is
        measured on :attr:`device`, and ``config["precision"]`` records the precision used. A
        run that :attr:`stops_early` publishes nothing: ``model`` comes back as it is, unmeasured
        (so every trainer ends in this one call)."""
        if self.precision_used is None:
            raise RuntimeError(f"{self.name}: publish() comes after run()")
        if self.stops_early:
            return model
        device = self.device
        return weights.publish(name, model, lambda: fresh().to(device), measure, command=command,
                               started=started, config={**config, "precision": self.precision_used},
                               half=half)

    def _resume(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
        if not self.checkpoint_path.exists():
            return 0
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        if state.get("name", self.name) != self.name:
            raise ValueError(f"{self.checkpoint_path} belongs to {state['name']!r}, not {self.name!r}; "
                             "pass another --run-dir (or delete that folder to start over)")
        saved = state.get("precision", self.precision_used)  # checkpoints before precision was a choice: any
        if saved != self.precision_used:
            raise ValueError(f"{self.checkpoint_path} was trained in {saved}, this run would continue in "
                             f"{self.precision_used}; pass --precision {saved} (one run, one precision)")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return int(state["step"])

    def _save(self, accelerator: Accelerator, model: torch.nn.Module,
              optimizer: torch.optim.Optimizer, step: int,
              extra_state: Callable[[], dict] | None) -> None:
        if not accelerator.is_main_process:
            return
        state = {"model": accelerator.unwrap_model(model).state_dict(),
                 "optimizer": optimizer.state_dict(), "step": step, "name": self.name,
                 "precision": self.precision_used,
                 **(extra_state() if extra_state else {})}
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)

    def finished(self) -> bool:
        """Whether the checkpoint on disk has reached ``total_steps``."""
        if not self.checkpoint_path.exists():
            return False
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        return int(state["step"]) >= self.total_steps


def _accelerator(device: torch.device, mixed_precision: str) -> Accelerator:
    """An Accelerator on ``device`` with ``mixed_precision``. accelerate keeps one process-wide
    state and refuses another precision once set, so an earlier loop's state with another
    precision (the fp32 classifier, then a bf16 trainer) is cleared first."""
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != mixed_precision:
        AcceleratorState._reset_state()
    return Accelerator(cpu=device.type == "cpu", mixed_precision=mixed_precision)
