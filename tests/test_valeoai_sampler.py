"""valeoai v1.0's sampler conventions as knobs of ``maskgit``, the ``valeoai`` preset, and its wiring.

Reference values: upstream is valeoai/Maskgit-pytorch branch v1.0 at 674ef1d, Trainer/vit.py,
``MaskGIT.adap_sche`` (mode "arccos") and ``MaskGIT.sample``. The upstream count lists below
(UPSTREAM_COUNTS) were produced outside this repository by running that ``adap_sche`` function
verbatim (torch 2, float32) on an object with ``patch_size`` = side, then emulating ``sample``'s
loop (``t = min(t, mask.sum())``; ``break`` once ``mask.sum() == 0``) to get the masked count
after each step. Everything else is computed by hand in the comments.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from migbench.backbones.toy import toy
from migbench.benchmarks.suite import SuiteError, parse_suite
from migbench.methods.maskgit import (
    AUTONAT_T8,
    TITOK_B64,
    TITOK_L32,
    TITOK_S128,
    UNLOCKMGM,
    VALEOAI,
    MaskGITConfig,
)

from migbench.cli import main
from migbench.generate import generate
from migbench.recipe import build_sampler, expand_preset, presets, resolve
from migbench.rng import gumbel
from migbench.sampler import SampleState
from migbench.schedules import (
    choice_temperature,
    guidance_scale,
    masked_after_reveals,
    masked_after_steps,
    valeoai_reveal_counts,
)

# (N, T) -> (upstream's per-step counts, masked count after each step of sample()'s loop)
UPSTREAM_COUNTS = {
    (256, 8): ([1, 18, 26, 32, 38, 43, 48, 50], [255, 237, 211, 179, 141, 98, 50, 0]),
    (1024, 15): ([1, 26, 38, 46, 54, 61, 67, 73, 79, 84, 89, 94, 99, 104, 109],
                 [1023, 997, 959, 913, 859, 798, 731, 658, 579, 495, 406, 312, 213, 109, 0]),
    (64, 8): ([1, 5, 6, 8, 9, 11, 12, 12], [63, 58, 52, 44, 35, 24, 12, 0]),
    # rounding overshoots: the last count is 0 or negative and the loop stops a step early
    (9, 8): ([1, 1, 1, 1, 1, 2, 2, 0], [8, 7, 6, 5, 4, 2, 0]),
    (25, 20): ([1] * 12 + [2] * 7 + [-1], [24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 11, 9, 7, 5, 3, 1, 0]),
}


@pytest.mark.parametrize(("tokens", "steps"), list(UPSTREAM_COUNTS))
def test_arccos_valeoai_matches_upstream_adap_sche(tokens: int, steps: int) -> None:
    counts, masked = UPSTREAM_COUNTS[(tokens, steps)]
    assert valeoai_reveal_counts(steps, tokens) == counts
    assert masked_after_steps("arccos-valeoai", steps, tokens) == masked


def test_arccos_valeoai_by_hand_t8_n256() -> None:
    # v_k = arccos(1 - k/7)/(pi/2) = 0, .3445, .4935, .6128, .7180, .8155, .9087, 1 (sum 4.8931);
    # 256 v_k / sum = 0, 18.02, 25.82, 32.06, 37.57, 42.67, 47.54, 52.32 -> rounded, 0 -> 1:
    # 1, 18, 26, 32, 38, 43, 48, 52 (sum 258), so the last step takes 52 + 256 - 258 = 50
    assert valeoai_reveal_counts(8, 256) == [1, 18, 26, 32, 38, 43, 48, 50]
    # one token at step 0 (v_0 = 0), against TiTok's floor rule ("arccos"), which reveals 21
    assert masked_after_steps("arccos-valeoai", 8, 256)[0] == 255
    assert masked_after_steps("arccos", 8, 256)[0] == 235
    assert valeoai_reveal_counts(1, 256) == [256]  # a 0/0 upstream; here the one step reveals all
    assert masked_after_reveals([3, 5, 2], 6) == [3, 0]


def test_gumbel_anneal_t8() -> None:
    valeoai = [choice_temperature(4.5, k, 8, "linear-valeoai") for k in range(8)]
    google = [choice_temperature(4.5, k, 8, "linear") for k in range(8)]
    # 4.5 (1 - k/7) against 4.5 (1 - (k+1)/8)
    assert valeoai == pytest.approx([4.5, 3.857143, 3.214286, 2.571429, 1.928571, 1.285714, 0.642857, 0.0], abs=1e-6)
    assert google == pytest.approx([3.9375, 3.375, 2.8125, 2.25, 1.6875, 1.125, 0.5625, 0.0])
    assert choice_temperature(4.5, 0, 1, "linear-valeoai") == 0.0  # T = 1: the one step is the last


def test_cfg_ramp_t8() -> None:
    valeoai = [guidance_scale("linear-valeoai", 3.0, k, 8) for k in range(8)]
    muse = [guidance_scale("linear", 3.0, k, 8) for k in range(8)]
    # linspace(0, 3, 8) = 3k/7, reaching w at the last step; MUSE/TiTok 3k/8 stops at 2.625
    assert valeoai == pytest.approx([0.0, 0.428571, 0.857143, 1.285714, 1.714286, 2.142857, 2.571429, 3.0], abs=1e-6)
    assert muse == pytest.approx([0.0, 0.375, 0.75, 1.125, 1.5, 1.875, 2.25, 2.625])
    assert guidance_scale("linear-valeoai", 3.0, 0, 1) == 3.0


@pytest.fixture(scope="module")
def stack():
    return toy()


def test_preset_sampler_plan_cfg_and_temperature(stack, first_step_logits) -> None:
    """The preset's sampler on toy (64 tokens): valeoai's counts, CFG 3k/7 per step, and the
    logits (1 + w_k) l_c - w_k l_u multiplied by sm_temp."""
    recipe = resolve("maskgit", expand_preset("valeoai", {"maskgit.cfg_scale": 3.0, "maskgit.steps": 8}))
    sampler = build_sampler(recipe, stack)
    plan = sampler.schedule.plan(64, torch.Generator())
    assert [i.masked_after for i in plan] == UPSTREAM_COUNTS[(64, 8)][1]
    (cfg,) = sampler.terms
    assert [cfg.scale_at(i) for i in plan] == pytest.approx([3 * k / 7 for k in range(8)])

    recipe = resolve("maskgit", expand_preset("valeoai", {"maskgit.cfg_scale": 3.0, "maskgit.steps": 1,
                                                          "maskgit.temperature": 1.3}))
    sampler = build_sampler(recipe, stack)
    labels = torch.tensor([1, 2])
    seen = first_step_logits(sampler, labels)
    ids = torch.full((2, 64), stack.backbone.layout.mask_id)
    lc = stack.backbone(ids, labels).logits.float()
    lu = stack.backbone(ids, torch.full_like(labels, -1)).logits.float()
    # T = 1: the one step is the last, so w_0 = w = 3
    torch.testing.assert_close(seen, 1.3 * (4.0 * lc - 3.0 * lu), rtol=1e-5, atol=1e-5)


def test_scorer_adds_annealed_gumbel_to_log_p(stack) -> None:
    """confidence = log p(chosen) + r_temp (1 - k/(T-1)) Gumbel (vit.py: log of the gathered
    softmax(logit * sm_temp) probability plus the annealed noise)."""
    sampler = build_sampler(resolve("maskgit", expand_preset("valeoai", {"maskgit.steps": 8})), stack)
    plan = sampler.schedule.plan(64, torch.Generator())
    logp = -torch.rand(2, 64, generator=torch.Generator().manual_seed(1))
    ids = torch.full((2, 64), stack.backbone.layout.mask_id)
    for info in (plan[0], plan[3], plan[7]):
        state = SampleState(ids=ids, masked=ids == stack.backbone.layout.mask_id, labels=torch.tensor([0, 1]),
                            info=info, generator=torch.Generator().manual_seed(5), backbone=stack.backbone, nfe={})
        tau = 4.5 * (1 - info.step / 7)
        noise = gumbel((2, 64), torch.Generator().manual_seed(5), "cpu")
        expected = logp if tau == 0.0 else logp + tau * noise
        torch.testing.assert_close(sampler.scorer(ids, logp, state), expected)


def test_preset_contents_and_precedence() -> None:
    assert presets() == {"valeoai": VALEOAI, "autonat_t8": AUTONAT_T8, "unlockmgm": UNLOCKMGM,
                         "titok_l32": TITOK_L32, "titok_b64": TITOK_B64, "titok_s128": TITOK_S128}
    assert VALEOAI == {"maskgit.schedule": "arccos-valeoai", "maskgit.choice_anneal": "linear-valeoai",
                       "maskgit.cfg_schedule": "linear-valeoai", "maskgit.temperature_mode": "multiplier",
                       "maskgit.cfg_convention": "maskgit"}
    assert expand_preset(None, {"maskgit.steps": 4}) == {"maskgit.steps": 4}
    expanded = expand_preset("valeoai", {"maskgit.schedule": "cosine", "maskgit.steps": 15})
    assert expanded == {**VALEOAI, "maskgit.schedule": "cosine", "maskgit.steps": 15}  # explicit wins
    # a preset is only overrides: the recipe (and so the run hash) is that of the knob values
    assert resolve("maskgit", expand_preset("valeoai")).describe() == resolve("maskgit", VALEOAI).describe()
    with pytest.raises(KeyError, match=r"unknown preset 'valeo' \(did you mean 'valeoai'\?\); known: valeoai"):
        expand_preset("valeo")


def test_default_knobs_are_unchanged() -> None:
    """The new values are values of existing knobs: the default config, hence every committed
    recipe and run hash, is as before."""
    config = MaskGITConfig()
    assert (config.schedule, config.choice_anneal, config.cfg_schedule, config.temperature_mode,
            config.cfg_convention) == ("cosine", "linear", "constant", "divisor", "maskgit")


def test_suite_preset_expands_before_the_hash() -> None:
    raw = {"backbone": "toy", "n": 16, "preset": "valeoai", "set": {"maskgit.cfg_scale": 3.0},
           "runs": [{"label": "suite preset", "grid": {"maskgit.schedule": ["cosine"]}},
                    {"label": "explicit", "set": VALEOAI},
                    {"label": "run preset", "preset": "valeoai"}]}
    suite = parse_suite(raw)
    first, explicit, run = suite.points
    assert first.recipe.config("maskgit").schedule == "cosine"  # the grid wins over the preset
    assert first.recipe.config("maskgit").cfg_schedule == "linear-valeoai"
    assert dict(explicit.overrides) == dict(run.overrides) == {**VALEOAI, "maskgit.cfg_scale": 3.0}
    assert explicit.recipe == run.recipe
    no_preset = parse_suite({k: v for k, v in raw.items() if k != "preset"})
    assert no_preset.points[0].recipe.config("maskgit").cfg_schedule == "constant"
    with pytest.raises(SuiteError, match=r"runs\[0\] \(a\): unknown preset 'nosuch'; known: valeoai"):
        parse_suite({"backbone": "toy", "runs": [{"label": "a", "preset": "nosuch"}]})
    with pytest.raises(SuiteError, match=r"runs\[0\]\.preset must be str"):
        parse_suite({"backbone": "toy", "runs": [{"label": "a", "preset": ["valeoai"]}]})


def test_cli_sample_with_preset(tmp_path) -> None:
    out = tmp_path / "s"
    assert main(["sample", "--backbone", "toy", "--n", "4", "--batch-size", "4", "--preset", "valeoai",
                 "--set", "maskgit.cfg_scale=3", "--set", "maskgit.steps=44", "--out", str(out)]) == 0
    config = json.loads((out / "meta.json").read_text())["recipe"]["configs"]["maskgit"]
    assert {f"maskgit.{k}": config[k] for k in ("schedule", "choice_anneal", "cfg_schedule", "temperature_mode",
                                                "cfg_convention")} == VALEOAI
    assert config["cfg_scale"] == 3.0 and config["steps"] == 44


def test_a_plan_that_ends_early_samples_every_token(stack) -> None:
    """T = 44 on 64 tokens: upstream's rounding fills the canvas at step 42 of 44."""
    assert len(masked_after_steps("arccos-valeoai", 44, 64)) == 43
    recipe = resolve("maskgit", expand_preset("valeoai", {"maskgit.steps": 44, "maskgit.cfg_scale": 1.0}))
    result = generate(stack, recipe, 3, 0, batch_size=3, progress=False)
    assert result.nfe_per_image["total"] == 43 + 42  # step 0 runs unguided (w_0 = 0)
    assert math.isfinite(float(result.images.astype("float64").mean()))
