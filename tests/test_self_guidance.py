"""Self-guidance: guided logits, the adapter at initialisation, the training batch, NFE."""

import pytest
import torch
from migbench.backbones.fmnist import fmnist
from migbench.backbones.toy import toy
from migbench.methods import self_guidance
from migbench.methods.self_guidance import SelfGuidance, SelfGuidanceTraining, check_fits
from migbench.methods.self_guidance.adapter import AuxiliaryPass, TOASTAdapter, auxiliary_logits
from migbench.methods.self_guidance.train import (
    correction_loss,
    corrupted_batch,
    substitution_mask,
    train_adapter,
)

from migbench.api import NULL_LABEL, HookSet
from migbench.generate import generate
from migbench.recipe import build_sampler, resolve


@pytest.fixture
def adapter(monkeypatch):
    module = SelfGuidance.random_parts(toy())
    monkeypatch.setattr(self_guidance, "load_adapter", lambda name, backbone: module)
    return module


def sg(overrides: dict[str, object]):
    return resolve("self_guidance", {"self_guidance.weights": "patched", **overrides})


def test_adapter_at_initialisation() -> None:
    torch.manual_seed(0)
    adapter = TOASTAdapter(num_classes=10, width=32, depth=2, factor=4).eval()
    assert torch.equal(adapter.top_down_transform, torch.eye(32))
    h = torch.randn(3, 65, 32)
    labels = torch.tensor([0, 4, NULL_LABEL])
    anchor = adapter.cls_anchor_gen(labels)
    assert anchor.shape == (3, 1, 32)
    cos = torch.nn.functional.cosine_similarity(h, anchor.expand_as(h), dim=-1).clamp(0, 1)
    torch.testing.assert_close(adapter.select(h, labels), h * cos[..., None])
    signals = adapter.feedback(adapter.select(h, labels))
    first, second = adapter.decoders[1].linear, adapter.decoders[1].linear2
    torch.testing.assert_close(signals[1], second(first(adapter.select(h, labels))))
    assert len(signals) == 2 and all(s.shape == h.shape for s in signals)


def test_guided_logits_are_two_l_minus_aux_at_s_one(adapter, first_step_logits) -> None:
    stack = toy()
    sampler = build_sampler(sg({"maskgit.steps": 1}), stack)
    labels = torch.tensor([1, 2])
    seen = {"l": first_step_logits(sampler, labels)}
    ids = torch.full((2, 64), stack.backbone.layout.mask_id)
    main = stack.backbone(ids, labels)
    aux = AuxiliaryPass(2)
    aux_logits = auxiliary_logits(stack.backbone, adapter, aux, aux.hooks(), labels, main.last_block)
    torch.testing.assert_close(seen["l"], 2 * main.logits - aux_logits, rtol=1e-5, atol=1e-5)


def test_auxiliary_pass_blanks_the_class_slot(adapter) -> None:
    """Only the anchor sees the class: with one anchor for all, the aux pass ignores labels."""
    stack = toy()
    aux = AuxiliaryPass(2)
    last = torch.randn(1, 65, 32).expand(2, -1, -1)
    with torch.no_grad():
        table = adapter.cls_anchor_gen.mlp_c.weight
        table.copy_(table[0].expand_as(table))
    out = auxiliary_logits(stack.backbone, adapter, aux, aux.hooks(), torch.tensor([1, 7]), last)
    torch.testing.assert_close(out[0], out[1])


def test_nfe_two_per_step_and_zero_scale_skips(adapter) -> None:
    on = generate(toy(), sg({"maskgit.steps": 5}), 4, 0, batch_size=4, progress=False)
    assert on.nfe_per_image["backbone"] == 10
    assert on.extra_parameters["self_guidance"]["online"] == sum(p.numel() for p in adapter.parameters())
    off = generate(toy(), sg({"maskgit.steps": 5, "self_guidance.scale": 0.0}), 4, 0,
                   batch_size=4, progress=False)
    assert off.nfe_per_image["backbone"] == 5


def test_substitution_rate_and_positions() -> None:
    masked = torch.zeros(4, 64, dtype=torch.bool)
    masked[0, :54] = True     # 10 visible -> 3
    masked[1, :63] = True     # 1 visible -> at least 1
    masked[2] = True          # none visible -> none
    sub = substitution_mask(masked, 0.3, torch.Generator().manual_seed(0))
    assert sub.sum(1).tolist() == [3, 1, 0, 19]   # round(0.3 * 64) = 19
    assert not (sub & masked).any()


def test_training_loss_only_at_substituted_positions(adapter) -> None:
    stack = toy()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 16, (6, 64), generator=gen)
    labels = torch.arange(6)
    canvas, substituted = corrupted_batch(stack.backbone, x0, labels, gen)
    assert ((canvas == stack.backbone.layout.mask_id) & substituted).sum() == 0
    aux = AuxiliaryPass(2)
    adapter.train().requires_grad_(True)
    loss, metrics = correction_loss(stack.backbone, adapter, aux, aux.hooks(), x0, labels, canvas,
                                    substituted, 0.1)
    loss.backward()
    assert adapter.top_down_transform.grad is not None and metrics["feedback"] > 0
    assert all(p.grad is None for p in stack.backbone.parameters())


def test_blank_label_pass_equals_the_blanked_embedding(adapter) -> None:
    """BLANK_LABEL gives the pass the class-slot embedding that blanking it inside the embedding
    (the method before #16) gave: [MASK] plus the slot's position embedding, bit for bit."""
    backbone = toy().backbone
    labels = torch.tensor([3, NULL_LABEL, 8])
    last = torch.randn(3, 65, 32, generator=torch.Generator().manual_seed(1))
    aux = AuxiliaryPass(2)
    new = auxiliary_logits(backbone, adapter, aux, aux.hooks(), labels, last)

    def blank_slot(x, ctx):
        x = x.clone()
        x[:, 0] = backbone.tok_emb.weight[backbone.layout.mask_id] + backbone.pos_emb[0, 0]
        return x
    hooks = aux.hooks()
    hooks.add("embed", blank_slot)
    ids = torch.full((3, 64), backbone.layout.mask_id)
    old = backbone(ids, labels, hooks, branch="self_guidance").logits
    assert torch.equal(new, old)


def test_hooks_of_the_auxiliary_pass_see_the_sampled_class(adapter) -> None:
    seen = []
    hooks = HookSet()
    hooks.add("block_in.0", lambda x, ctx: (seen.append(ctx.labels), x)[1])
    labels = torch.tensor([2, 5])
    auxiliary_logits(toy().backbone, adapter, AuxiliaryPass(2), hooks, labels, torch.randn(2, 65, 32))
    assert len(seen) == 1 and torch.equal(seen[0], labels)


def test_an_adapter_of_another_depth_is_refused_naming_the_stack(monkeypatch) -> None:
    deeper = TOASTAdapter(num_classes=10, width=32, depth=3, factor=4)
    monkeypatch.setattr(self_guidance, "load_adapter", lambda name, backbone: deeper)
    with pytest.raises(ValueError, match="adapter for depth 3, width 32, 10 classes; stack toy's backbone has depth 2"):
        build_sampler(sg({}), toy())


def test_auto_weights_on_a_stack_without_any_are_refused() -> None:
    with pytest.raises(ValueError, match="self_guidance.weights=auto: stack toy has no self_guidance weights"):
        build_sampler(resolve("self_guidance", {}), toy())
    build_sampler(resolve("self_guidance", {}, neutral=["self_guidance"]), toy())  # s = 0 never asks


def test_the_committed_adapter_fits_the_fmnist_stack() -> None:
    stack = fmnist()
    assert resolve("self_guidance", {}).bind(stack).config("self_guidance").weights == "fmnist_self_guidance"
    check_fits(self_guidance.load_adapter("fmnist_self_guidance", stack.backbone), stack, "fmnist_self_guidance")


def test_training_needs_the_stacks_token_maps(tmp_path) -> None:
    with pytest.raises(ValueError, match="fit self_guidance: stack toy has no token maps"):
        train_adapter(tmp_path, toy(), SelfGuidanceTraining(steps=1))
    with pytest.raises(ValueError, match="lr must be positive"):
        SelfGuidanceTraining(lr=0.0)
