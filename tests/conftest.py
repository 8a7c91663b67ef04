"""Shared test helpers."""

import pytest
import torch


@pytest.fixture
def first_step_logits():
    """``first_step_logits(sampler, labels)`` runs one batch and returns the processed logits
    (B, N, K) the token sampler received at the first step."""
    def run(sampler, labels: torch.Tensor) -> torch.Tensor:
        seen = []
        original = sampler.token_sampler

        def record(logits, state):
            seen.append(logits)
            return original(logits, state)
        sampler.token_sampler = record
        sampler(labels, torch.Generator().manual_seed(0))
        return seen[0]
    return run


# Each trained method's loader (module, attribute); its last argument is the backbone.
TRAINED_LOADERS = {"self_guidance": ("migbench.methods.self_guidance", "load_adapter"),
                   "token_critic": ("migbench.methods.token_critic", "load_critic"),
                   "ka_mig": ("migbench.methods.ka_mig", "load_module")}


def patch_loaders(monkeypatch: pytest.MonkeyPatch, stack) -> None:
    """Every trained method's loader returns ``Method.random_parts(stack)`` (built here, once),
    on the device of the backbone it is asked for, whatever weights it is asked for."""
    import importlib

    from migbench import registry

    trained = [name for name in registry.METHODS if registry.method(name).trained]
    assert sorted(trained) == sorted(TRAINED_LOADERS), "a trained method without a loader to patch"
    for name, (module, attribute) in TRAINED_LOADERS.items():
        parts = registry.method(name).random_parts(stack)
        monkeypatch.setattr(importlib.import_module(module), attribute,
                            lambda *args, parts=parts: parts.to(next(args[-1].parameters()).device))


@pytest.fixture
def toy_trained_parts(monkeypatch):
    """Trained methods load their ``random_parts`` for the toy backbone instead of committed weights
    (whatever weights they name: the toy stack names none, so "auto" goes through to the loaders)."""
    from migbench.backbones.toy import toy

    from migbench.sampler import SamplerBuilder

    monkeypatch.setattr(SamplerBuilder, "weights_name", lambda self, owner, knob, value: value)
    patch_loaders(monkeypatch, toy())


@pytest.fixture
def random_trained_parts(monkeypatch):
    """``random_trained_parts(stack) -> stack``: :func:`patch_loaders` for ``stack``, and the stack
    returned names weights for every trained method, so that ``"auto"`` knobs resolve
    (:meth:`Recipe.bind`). The names are the Fashion-MNIST ones, labels only: no loader reads
    them, while a method's look-ups of its manifest entry still find one."""
    from dataclasses import replace

    from migbench.backbones.fmnist import METHOD_WEIGHTS

    def patch(stack):
        patch_loaders(monkeypatch, stack)
        return replace(stack, method_weights=METHOD_WEIGHTS)
    return patch


def machine_key() -> str:
    """What a bit-exact CPU recording depends on: the torch version, the CPU kernel family and
    whether bf16 is native (another CPU kind rounds differently, so its bits differ)."""
    from migbench.precision import cpu_native_bf16

    return f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, native bf16 {cpu_native_bf16()}"


@pytest.fixture
def machine() -> str:
    """This machine's :func:`machine_key`."""
    return machine_key()


@pytest.fixture
def recorded_here(machine: str):
    """``recorded_here(recorded_on)`` skips a bit-exact comparison with values recorded on another
    machine kind (or when a GPU is present)."""
    def check(recorded_on: str) -> None:
        if torch.cuda.is_available() or recorded_on != machine:
            pytest.skip(f"values recorded on {recorded_on!r}, this is {machine!r}")
    return check
