"""Token-Critic: labels, AUROC, revocation, NFE = 2T, the constant critic, determinism."""

import numpy as np
import pytest
import torch
from migbench.backbones.toy import toy
from migbench.methods import token_critic
from migbench.methods.token_critic import remask_anywhere
from migbench.methods.token_critic.critic import TokenCritic, auroc, breakdown
from migbench.methods.token_critic.train import CriticRecipe, critic_labels

from migbench.generate import generate
from migbench.guidance import StepInfo
from migbench.recipe import resolve
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
        CriticRecipe(label="wrong")


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
    from migbench.backbones.fmnist.transformer import TransformerConfig

    torch.manual_seed(0)
    critic = TokenCritic(TransformerConfig(codebook_size=16, width=32, depth=2, heads=2)).eval()
    monkeypatch.setattr(token_critic, "load_critic", lambda name: critic)
    return critic


def test_nfe_is_two_per_step(toy_critic) -> None:
    result = generate(toy(), resolve("token_critic", {"maskgit.steps": 6}), 4, 0, batch_size=4, progress=False)
    assert result.nfe_per_image == {"backbone": 6.0, "critic": 6.0, "total": 12.0}
    assert result.extra_parameters["token_critic"]["online"] == sum(p.numel() for p in toy_critic.parameters())


def test_determinism(toy_critic) -> None:
    recipe = resolve("token_critic", {"maskgit.steps": 6})
    a = generate(toy(), recipe, 6, 3, batch_size=3, progress=False)
    b = generate(toy(), recipe, 6, 3, batch_size=3, progress=False)
    np.testing.assert_array_equal(a.images, b.images)


def test_constant_critic_remasks_at_random_anywhere(monkeypatch) -> None:
    """Documented: with a critic that always says "real", only the annealed noise orders the
    tokens, so re-masking is uniformly random over all positions, revealed ones included."""
    monkeypatch.setattr(token_critic, "load_critic", lambda name: ConstantCritic())
    stack = toy()
    recipe = resolve("token_critic", {"maskgit.steps": 8})
    from migbench.recipe import build_sampler

    sampler = build_sampler(recipe, stack)
    seen = []
    original = sampler.selector
    sampler.selector = lambda c, s, st: (seen.append((st.masked.clone(), original(c, s, st))), seen[-1][1])[1]
    ids = sampler(torch.arange(32) % 10, torch.Generator().manual_seed(0))
    assert (ids != stack.backbone.layout.mask_id).all()
    mask_id = stack.backbone.layout.mask_id
    revoked = sum(int(((~before) & (after == mask_id)).sum()) for before, after in seen)
    assert revoked > 0


def test_critic_from_generator_copies_the_body_and_adds_a_fresh_head() -> None:
    generator = toy().backbone
    critic = TokenCritic.from_generator(generator)
    assert critic.config == generator.config
    body, source = critic.body.state_dict(), generator.state_dict()
    assert all(torch.equal(body[k], v) for k, v in source.items() if not k.startswith("head."))
    assert critic.body.head.weight.shape == (1, generator.width)
    ids = torch.randint(0, 16, (2, generator.config.num_tokens))
    assert critic(ids, torch.tensor([0, 1])).shape == (2, generator.config.num_tokens)
