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
    """Trained methods load random components that fit the toy backbone instead of committed ones."""
    from migbench.backbones.fmnist.transformer import TransformerConfig
    from migbench.backbones.toy import toy
    from migbench.methods import self_guidance, token_critic
    from migbench.methods.self_guidance.adapter import TOASTAdapter
    from migbench.methods.token_critic.critic import TokenCritic

    torch.manual_seed(0)
    critic = TokenCritic(TransformerConfig(codebook_size=16, width=32, depth=2, heads=2)).eval()
    monkeypatch.setattr(token_critic, "load_critic", lambda name: critic)
    adapter = TOASTAdapter(num_classes=10, width=32, depth=2, factor=4).eval()
    monkeypatch.setattr(self_guidance, "load_adapter", lambda name: adapter)

    from migbench.methods import ka_mig
    from migbench.methods.ka_mig.fusion import KAMIGModule
    from migbench.methods.ka_mig.graphs import normalise

    backbone = toy().backbone
    module = KAMIGModule(backbone.width, backbone.depth, backbone.head, normalise(torch.rand(16, 16)),
                         normalise(torch.rand(16, 16)), torch.rand(10, 64, 16) > 0.5).eval()
    torch.nn.Linear(32, 16)  # the head copy was once a fresh Linear whose init drew these: same parts as recorded
    with torch.no_grad():
        for layer in [*module.positive, *module.negative]:
            torch.nn.init.normal_(layer.weight, std=0.05)
    monkeypatch.setattr(ka_mig, "load_module", lambda name, graphs, backbone: module.requires_grad_(False))


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
