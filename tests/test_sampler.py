"""The sampling loop on ``toy``: slots, guidance, NFE, labels, compilation and composition
(neutral configs and determinism over processes, on every family: tests/test_contract.py)."""

import itertools

import numpy as np
import pytest
import torch
from migbench.backbones.toy import toy

from migbench import registry
from migbench.generate import generate
from migbench.guidance import GuidanceTerm, combine
from migbench.recipe import build_sampler, resolve
from migbench.sampler import SamplerBuilder, SlotConflictError

OPTIONAL = [m for m in registry.METHODS if m != "maskgit"]
pytestmark = pytest.mark.usefixtures("toy_trained_parts")


@pytest.fixture(scope="module")
def stack():
    return toy()


def sample(stack, methods, overrides=None, n=12, seed=0, neutral=(), **kw):
    return generate(stack, resolve(methods, overrides or {}, neutral=neutral), n, seed,
                    batch_size=5, progress=False, **kw)


def test_combine_is_equation_1() -> None:
    main, ref_a, ref_b = torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([4.0])
    # 2 + 3 (2 - 1) + 0.5 (2 - 4) = 4
    assert combine(main, [(3.0, ref_a), (0.5, ref_b)]).item() == pytest.approx(4.0)


def test_cfg_conventions(stack) -> None:
    for overrides, expected in [({"maskgit.cfg_scale": 2.0}, 2.0),
                                ({"maskgit.cfg_scale": 3.0, "maskgit.cfg_convention": "muse"}, 2.0)]:
        builder = SamplerBuilder(stack)
        recipe = resolve("maskgit", overrides)
        registry.method("maskgit").install(builder, recipe.config("maskgit"))
        info = build_sampler(recipe, stack).schedule.plan(64)[3]
        assert builder.guidance["cfg"].scale_at(info) == pytest.approx(expected)


def test_cfg_logits_per_formula(stack, first_step_logits) -> None:
    """(1 + w) l_c - w l_u on the real branches of the toy backbone at step 0."""
    recipe = resolve("maskgit", {"maskgit.cfg_scale": 1.5, "maskgit.steps": 1})
    sampler = build_sampler(recipe, stack)
    labels = torch.tensor([1, 2])
    seen = {"l": first_step_logits(sampler, labels)}
    ids = torch.full((2, 64), stack.backbone.layout.mask_id)
    lc = stack.backbone(ids, labels).logits.float()
    lu = stack.backbone(ids, torch.full_like(labels, -1)).logits.float()
    torch.testing.assert_close(seen["l"], 2.5 * lc - 1.5 * lu, rtol=1e-5, atol=1e-5)


def test_slot_conflict_names_both(stack) -> None:
    builder = SamplerBuilder(stack)
    builder.claim("scorer", object(), "maskgit", weak=True)
    builder.claim("scorer", object(), "halton")
    with pytest.raises(SlotConflictError, match="'halton' and 'critic'"):
        builder.claim("scorer", object(), "critic")
    with pytest.raises(ValueError, match="unknown slot"):
        builder.claim("sorter", object(), "x")


def test_missing_slot_is_an_error(stack) -> None:
    with pytest.raises(ValueError, match="maskgit"):
        SamplerBuilder(stack).build()


def test_guidance_term_needs_one_branch_kind() -> None:
    with pytest.raises(ValueError):
        GuidanceTerm(name="x", owner="x", scale_at=lambda info: 1.0)


@pytest.mark.parametrize("overrides,expected", [
    ({}, 8), ({"maskgit.cfg_scale": 2.0}, 16),
    ({"maskgit.cfg_scale": 2.0, "maskgit.cfg_schedule": "linear"}, 15),
    ({"maskgit.steps": 5, "maskgit.cfg_scale": 1.0, "maskgit.cfg_schedule": "power-cosine"}, 9),
    ({"maskgit.cfg_scale": 1.0, "maskgit.cfg_convention": "muse"}, 8),
])
def test_nfe_counts(stack, overrides, expected) -> None:
    assert sample(stack, "maskgit", overrides).nfe_per_image["backbone"] == expected


def test_samples_are_all_decoded_and_balanced(stack) -> None:
    recipe = resolve("maskgit")
    sampler = build_sampler(recipe, stack)
    ids = sampler(torch.arange(10) % 10, torch.Generator().manual_seed(0))
    assert (ids != stack.backbone.layout.mask_id).all() and ids.max() < 16
    assert sorted(sample(stack, "maskgit", n=20).labels.tolist()) == sorted(list(range(10)) * 2)


@pytest.mark.parametrize("bad", [10, -2])
def test_generate_rejects_bad_labels_before_sampling(stack, bad) -> None:
    """Labels are validated once per run at generate(); the forward itself does not sync to check."""
    labels = torch.tensor([0, 1, bad, 3])
    with pytest.raises(ValueError, match=r"labels must be class ids in \[0, 10\) or -1"):
        generate(stack, resolve("maskgit"), 4, 0, labels=labels, progress=False)


def test_compiled_backbone_gives_the_same_samples(stack) -> None:
    """compile_backbone=True (torch.compile, dynamic=False) samples what eager sampling does on the
    toy stack (about 30-60 s of inductor compilation on a CPU)."""
    overrides = {"maskgit.cfg_scale": 1.0}
    eager = sample(stack, "maskgit", overrides, n=10)
    compiled = sample(stack, "maskgit", overrides, n=10, compile_backbone=True)
    np.testing.assert_array_equal(eager.images, compiled.images)


@pytest.mark.parametrize("pair", list(itertools.combinations(OPTIONAL, 2)))
def test_pairwise_composition(stack, pair) -> None:
    try:
        result = sample(stack, list(pair), n=5)
    except SlotConflictError as err:
        assert pair[0] in str(err) and pair[1] in str(err)
    else:
        assert result.images.shape == (5, 32, 32, 1)


def test_recipe_errors_suggest() -> None:
    with pytest.raises(KeyError, match="did you mean 'choice_temperature'"):
        resolve("maskgit", {"maskgit.choice_temprature": 2})
    with pytest.raises(KeyError, match="did you mean 'halton'"):
        resolve("haltn")
    with pytest.raises(KeyError, match="not in the methods list"):
        resolve("maskgit", {"halton.steps": 4})
    with pytest.raises(ValueError, match="choose from"):
        resolve("maskgit", {"maskgit.schedule": "cosin"})
    with pytest.raises(ValueError, match="cannot read"):
        resolve("maskgit", {"maskgit.steps": "eight"})
    with pytest.raises(ValueError, match="listed twice"):
        resolve("halton,halton")


def test_overriding_a_taken_slot_warns(stack) -> None:
    with pytest.warns(UserWarning, match=r"maskgit.steps has no effect: the schedule slot belongs to 'halton'"):
        build_sampler(resolve("halton", {"maskgit.steps": 4}), stack)
