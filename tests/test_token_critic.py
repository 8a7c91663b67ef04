"""Token-Critic: labels, AUROC, revocation, NFE = 2T, the constant critic, determinism."""

import numpy as np
import pytest
import torch
from migbench.backbones.fmnist import fmnist
from migbench.backbones.toy import toy
from migbench.methods import token_critic
from migbench.methods.token_critic import TokenCriticMethod, TokenCriticTraining, remask_anywhere
from migbench.methods.token_critic.critic import auroc, breakdown, new_critic
from migbench.methods.token_critic.train import critic_labels

from migbench.generate import generate
from migbench.guidance import StepInfo
from migbench.recipe import build_sampler, resolve
from migbench.sampler import SampleState


class ConstantCritic(torch.nn.Module):
    """Always says "real" with the same confidence."""

    def forward(self, ids, labels, hooks=None):
        return torch.full(ids.shape, -5.0)


def test_labels_on_a_hand_made_example() -> None:
    x0 = torch.tensor([[1, 2, 3, 4]])
    spliced = torch.tensor([[1, 7, 3, 9]])   # position 2 was sampled but equals x0
    mask = torch.tensor([[False, True, True, True]])
    assert critic_labels(x0, spliced, mask, "mask").tolist() == [[0.0, 1.0, 1.0, 1.0]]
    assert critic_labels(x0, spliced, mask, "differs").tolist() == [[0.0, 1.0, 0.0, 1.0]]
    with pytest.raises(ValueError, match="label"):
        TokenCriticTraining(label="wrong")


def test_auroc_hand_values() -> None:
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([0, 1])) == pytest.approx(0.5)
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([0, 1])) == 1.0
    with pytest.raises(ValueError):
        auroc(torch.tensor([0.0, 1.0]), torch.tensor([1, 1]))


def test_auroc_breakdown_hand_values() -> None:
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    mask = torch.tensor([[True, True, False, False], [True, False, True, False]])
    differs = torch.tensor([[True, False, False, False], [True, False, True, False]])
    out = breakdown(scores, mask, differs)
    assert out["pooled"] == pytest.approx(10 / 16, abs=1e-4)  # (3.5 + 3 + 0.5 + 3) / (4 * 4)
    assert out["within_canvas"] == pytest.approx((1.0 + 0.25) / 2, abs=1e-4)
    assert out["by_ratio"] == {"(0.25, 0.5]": pytest.approx(10 / 16, abs=1e-4)}
    assert out["sampled_equal"] == 0.25 and out["oracle"] == 0.875
    assert out["differing_only"] == pytest.approx(7 / 12, abs=1e-4)
    assert out["against_differs"] == pytest.approx(8.5 / 15, abs=1e-4)


def test_remasking_can_revoke_an_accepted_token() -> None:
    stack = toy()
    mask_id = stack.backbone.layout.mask_id
    candidates = torch.tensor([[3, 4, 5, 6]])
    masked_before = torch.tensor([[False, False, True, True]])  # positions 0, 1 accepted earlier
    scores = torch.tensor([[-9.0, 1.0, 2.0, 3.0]])              # the critic distrusts position 0
    state = SampleState(ids=candidates.masked_fill(masked_before, mask_id), masked=masked_before,
                        labels=torch.tensor([0]), info=StepInfo(1, 4, 0.5, 0.25, 2, 1, 4),
                        generator=torch.Generator(), backbone=stack.backbone, nfe={})
    assert remask_anywhere(candidates, scores, state).tolist() == [[mask_id, 4, 5, 6]]


@pytest.fixture
def toy_critic(monkeypatch):
    critic = TokenCriticMethod.random_parts(toy())
    monkeypatch.setattr(token_critic, "load_critic", lambda name, backbone: critic)
    return critic


def tc(overrides: dict[str, object]):
    return resolve("token_critic", {"token_critic.weights": "patched", **overrides})


def test_nfe_is_two_per_step(toy_critic) -> None:
    result = generate(toy(), tc({"maskgit.steps": 6}), 4, 0, batch_size=4, progress=False)
    assert result.nfe_per_image == {"backbone": 6.0, "critic": 6.0, "total": 12.0}
    assert result.extra_parameters["token_critic"]["online"] == sum(p.numel() for p in toy_critic.parameters())


def test_determinism(toy_critic) -> None:
    recipe = tc({"maskgit.steps": 6})
    a = generate(toy(), recipe, 6, 3, batch_size=3, progress=False)
    b = generate(toy(), recipe, 6, 3, batch_size=3, progress=False)
    np.testing.assert_array_equal(a.images, b.images)


def test_constant_critic_remasks_at_random_anywhere(monkeypatch) -> None:
    """Documented: with a critic that always says "real", only the annealed noise orders the
    tokens, so re-masking is uniformly random over all positions, revealed ones included."""
    monkeypatch.setattr(token_critic, "load_critic", lambda name, backbone: ConstantCritic())
    stack = toy()
    recipe = tc({"maskgit.steps": 8})
    sampler = build_sampler(recipe, stack)
    seen = []
    original = sampler.selector
    sampler.selector = lambda c, s, st: (seen.append((st.masked.clone(), original(c, s, st))), seen[-1][1])[1]
    ids = sampler(torch.arange(32) % 10, torch.Generator().manual_seed(0))
    assert (ids != stack.backbone.layout.mask_id).all()
    mask_id = stack.backbone.layout.mask_id
    revoked = sum(int(((~before) & (after == mask_id)).sum()) for before, after in seen)
    assert revoked > 0


def test_a_new_critic_copies_the_generators_body_and_adds_a_fresh_head() -> None:
    stack = toy()
    generator = stack.backbone
    critic = new_critic(stack, "generator")
    assert critic.describe() == {"kind": "token_critic", "backbone": generator.describe()}
    body, source = critic.body.state_dict(), generator.state_dict()
    assert all(torch.equal(body[k], v) for k, v in source.items() if not k.startswith("head."))
    assert critic.body.head.weight.shape == (1, generator.width)
    ids = torch.randint(0, 16, (2, generator.seq_len))
    assert critic(ids, torch.tensor([0, 1])).shape == (2, generator.seq_len)
    scratch = new_critic(stack, "scratch").body.state_dict()
    assert not torch.equal(scratch["tok_emb.weight"], source["tok_emb.weight"])


def test_a_backbone_without_fresh_cannot_train_a_critic(monkeypatch) -> None:
    stack = toy()
    monkeypatch.setattr(stack.backbone, "fresh", None)
    with pytest.raises(ValueError, match="stack toy's backbone has no fresh()"):
        new_critic(stack, "generator")


def test_the_committed_critic_loads_into_a_copy_of_the_fmnist_backbone() -> None:
    stack = fmnist()
    assert resolve("token_critic", {}).bind(stack).config("token_critic").weights == "fmnist_token_critic"
    critic = token_critic.load_critic("fmnist_token_critic", stack.backbone)  # strict: same keys as committed
    assert critic.body is not stack.backbone and critic.body.head.weight.shape == (1, stack.backbone.width)
    assert stack.backbone.head.weight.shape == (512, stack.backbone.width)  # the generator keeps its head


def test_a_critic_of_another_backbone_is_refused() -> None:
    with pytest.raises(ValueError, match="token_critic.weights='fmnist_token_critic' is a critic for the backbone"):
        token_critic.load_critic("fmnist_token_critic", toy().backbone)


def test_auto_weights_on_a_stack_without_any_are_refused() -> None:
    with pytest.raises(ValueError, match="token_critic.weights=auto: stack toy has no token_critic weights"):
        build_sampler(resolve("token_critic", {}), toy())


def test_weights_names_per_stack_and_variant() -> None:
    stack = toy()
    assert TokenCriticTraining().weights_name(stack) == "toy_token_critic"
    assert TokenCriticTraining(label="differs", init="scratch").weights_name(stack) == "toy_token_critic_differs_scratch"
    assert TokenCriticTraining(init="scratch", name="mine").weights_name(stack) == "mine"
