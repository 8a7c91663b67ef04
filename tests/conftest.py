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


@pytest.fixture
def toy_trained_parts(monkeypatch):
    """Trained methods load their ``random_parts`` for the toy backbone instead of committed weights
    (whatever weights they name: the toy stack names none, so "auto" goes through to the loaders)."""
    from migbench.backbones.toy import toy
    from migbench.methods import ka_mig, self_guidance, token_critic

    from migbench.sampler import SamplerBuilder

    def on_device(part: torch.nn.Module, backbone: torch.nn.Module) -> torch.nn.Module:
        return part.to(next(backbone.parameters()).device)  # where a loader puts its part

    monkeypatch.setattr(SamplerBuilder, "weights_name", lambda self, owner, knob, value: value)
    adapter = self_guidance.SelfGuidance.random_parts(toy())
    monkeypatch.setattr(self_guidance, "load_adapter", lambda name, backbone: on_device(adapter, backbone))
    critic = token_critic.TokenCriticMethod.random_parts(toy())
    monkeypatch.setattr(token_critic, "load_critic", lambda name, backbone: on_device(critic, backbone))
    ka_mig_parts = ka_mig.KAMIG.random_parts(toy())
    monkeypatch.setattr(ka_mig, "load_module", lambda name, graphs, backbone: on_device(ka_mig_parts, backbone))


@pytest.fixture
def toy_1d():
    """The toy stack with its 64 tokens declared 1-D (``token_shape`` (64,)): the shape of TiTok's
    tokens, for methods that need a 2-D grid to refuse."""
    from dataclasses import replace
    from types import SimpleNamespace

    from migbench.backbones.toy import toy

    stack = toy()
    tokens = SimpleNamespace(codebook_size=stack.tokenizer.codebook_size, token_shape=(64,),
                             image_shape=stack.tokenizer.image_shape)
    return replace(stack, name="toy_1d", tokenizer=tokens)


# Each trained method's loader, patched by ``random_trained_parts`` (module, attribute).
TRAINED_LOADERS = {"self_guidance": ("migbench.methods.self_guidance", "load_adapter"),
                   "token_critic": ("migbench.methods.token_critic", "load_critic"),
                   "ka_mig": ("migbench.methods.ka_mig", "load_module")}


@pytest.fixture
def random_trained_parts(monkeypatch):
    """``random_trained_parts(stack) -> stack``: every trained method's loader returns
    ``Method.random_parts(stack)`` (built here, once) whatever weights it is asked for, and the
    stack returned names weights for every trained method, so that ``"auto"`` knobs resolve
    (:meth:`Recipe.bind`). The names are the Fashion-MNIST ones, labels only: no loader reads
    them, while a method's look-ups of its manifest entry still find one."""
    import importlib
    from dataclasses import replace

    from migbench.backbones.fmnist import METHOD_WEIGHTS

    from migbench import registry

    trained = [name for name in registry.METHODS if registry.method(name).trained]
    assert sorted(trained) == sorted(TRAINED_LOADERS), "a trained method without a loader to patch"

    def patch(stack):
        for name, (module, attribute) in TRAINED_LOADERS.items():
            parts = registry.method(name).random_parts(stack)
            monkeypatch.setattr(importlib.import_module(module), attribute, lambda *args, parts=parts: parts)
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
