"""AutoNAT's searched sampling strategy as knobs of ``maskgit`` and the ``autonat_t8`` preset.

Upstream: LeapLabTHU/ImprovedNAT @ 2ca99946b2ad1969672d05213d269e1256249f6b and GuotaoLiang/KA-MIG @
0b4ceb150ef64207af65e2c9227c9b256a3ef094, ``configs/AutoNAT_L-T8_strategy.yaml`` (the same file in
both), sampled by ``libs/nat_misc.py`` (ImprovedNAT ``NATSchedule.generate``, KA-MIG
``GraphNATSchedule.generate_auto``) through ``cfg_nnet`` (ImprovedNAT ``train.py``, KA-MIG
``generate_npz.py``): ``cond + scale * (cond - uncond)``, uncond = context 1000.

How the upstream values were made (outside this repository, no upstream code committed): both
upstream functions were run verbatim (imported from the files above, torch 2.14.1 CPU) with
``gen_steps = 8``, the yaml's four lists (read with omegaconf), ``codebook_size = 64`` and, as
``nnet``, ``cfg_nnet`` written as upstream's over this repository's ``valeoai_tiny()`` backbone
(seed 0: 16 x 16 tokens, K = 64, mask id 64; uncond = ``NULL_LABEL``), labels [0, 3, 7, 9]. Their
randomness was coupled to migbench's draw order: ``torch.distributions.Categorical(logits).sample()``
was replaced by Gumbel-max over the masked rows with noise ``migbench.rng.gumbel((B m, K))``, and
``np.random.gumbel(size)`` by ``migbench.rng.gumbel(size)`` (float64), both from one
``torch.Generator().manual_seed(seed)`` (seeds 0 and 1): the same distributions as upstream's, drawn
in the order migbench's sampler draws them. Recorded per step: the masked count of the ``nnet``
input, the ``scale`` passed to ``nnet``, the softmax divisor (median of guided logits over the
logits handed to ``Categorical``, float32), the ``temperature`` passed to ``add_gumbel_noise``, and
that the scores passed to it equal log_softmax(guided logits) at the sampled ids (max |diff| 0 at
every step). The two functions gave the same ids (``tests/fixtures/autonat_t8_upstream_ids.safetensors``,
keys ``preset_seed{0,1}``, (4, 256) int64). The smallest top-2 gap of the perturbed log-probabilities
over all steps was 6e-4 (seed 0) and 7e-4 (seed 1), far above float32 rounding, so the ids do not
hang on the last bit of the backbone's logits.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from migbench.backbones.toy import toy
from migbench.backbones.valeoai import valeoai_tiny
from migbench.methods.maskgit import AUTONAT_T8, MaskGITConfig, guided_log_p
from safetensors.torch import load_file

from migbench.guidance import StepInfo
from migbench.recipe import build_sampler, expand_preset, presets, resolve
from migbench.rng import gumbel
from migbench.sampler import SampleState
from migbench.schedules import choice_temperature, masked_after_steps

FIXTURE = Path(__file__).parent / "fixtures" / "autonat_t8_upstream_ids.safetensors"

# Per step k = 0..7 of upstream's run (identical for both seeds and both functions)
UPSTREAM_MASKED_BEFORE = [256, 244, 225, 203, 190, 159, 104, 66]
UPSTREAM_CFG = [0.0001, 0.0001, 0.0001, 0.9151274967591447, 1.6160182878189675, 1.1945509026838659,
                1.38322370140345, 1.22678520936251]
UPSTREAM_SAMP_TEMP_F32 = [2.8999037742614746, 1.8672618865966797, 1.1443729400634766, 1.3796334266662598,
                          1.4699896574020386, 1.376068353652954, 1.7082165479660034, 0.7133060693740845]
UPSTREAM_GUMBEL_TEMP = [2.404912789740805, 2.477616274962803, 1.191696577294597, 0.7685444738649722,
                        1.0673489052089495, 0.9353720330515827, 0.7843839537838292, 0.0]
LABELS = torch.tensor([0, 3, 7, 9])


@pytest.fixture(scope="module")
def tiny():
    return valeoai_tiny()


def autonat(**extra: object):
    return resolve("maskgit", expand_preset("autonat_t8", {f"maskgit.{k}": v for k, v in extra.items()}))


def test_preset_is_the_upstream_yaml() -> None:
    assert presets()["autonat_t8"] is AUTONAT_T8
    config = autonat().config("maskgit")
    # the yaml's 7 ratios and 7 Gumbel temperatures, each with upstream's 0 at the last step
    assert config.ratios[-1] == 0.0 and config.choice_temperatures == tuple(UPSTREAM_GUMBEL_TEMP)
    assert config.temperatures == pytest.approx(UPSTREAM_SAMP_TEMP_F32, rel=1e-7)
    assert config.cfg_scales == tuple(UPSTREAM_CFG)
    assert (config.steps, config.temperature_mode, config.cfg_convention, config.confidence) == (
        8, "divisor", "maskgit", "untempered")


def test_preset_steps_match_upstream(tiny) -> None:
    """Reveal counts, CFG scale, softmax divisor and Gumbel scale per step, as upstream's run."""
    sampler = build_sampler(autonat(), tiny)
    plan = sampler.schedule.plan(256, torch.Generator())
    assert [i.masked_before for i in plan] == UPSTREAM_MASKED_BEFORE
    assert [i.masked_after for i in plan] == [244, 225, 203, 190, 159, 104, 66, 0]
    (cfg,) = sampler.terms
    assert [cfg.scale_at(i) for i in plan] == UPSTREAM_CFG
    (temperature,) = sampler.processors
    ones = torch.ones(1, 1, 1)
    for info, samp_temp in zip(plan, UPSTREAM_SAMP_TEMP_F32, strict=True):
        state = SampleState(ids=torch.zeros(1, 256, dtype=torch.long), masked=torch.ones(1, 256, dtype=torch.bool),
                            labels=LABELS[:1], info=info, generator=torch.Generator(), backbone=tiny.backbone, nfe={})
        assert 1.0 / temperature(ones, state).item() == pytest.approx(samp_temp, rel=1e-7)
    # Gumbel scale: the scorer adds tau_k * Gumbel to the untempered log p (tau_7 = 0: no noise)
    tempered = -torch.rand(2, 256, generator=torch.Generator().manual_seed(3))  # ignored: untempered
    for info, tau in zip(plan, UPSTREAM_GUMBEL_TEMP, strict=True):
        masked = torch.arange(256).expand(2, 256) < info.masked_before
        state = SampleState(ids=torch.zeros(2, 256, dtype=torch.long), masked=masked, labels=LABELS[:2], info=info,
                            generator=torch.Generator().manual_seed(5), backbone=tiny.backbone, nfe={})
        state.guided = torch.zeros(2, 256, 64)  # uniform: log p = -log 64 at every masked position
        logp = torch.where(masked, -math.log(64.0), 0.0)
        expected = logp + tau * gumbel((2, 256), torch.Generator().manual_seed(5), "cpu") if tau else logp
        torch.testing.assert_close(sampler.scorer(torch.zeros(2, 256, dtype=torch.long), tempered, state), expected)


def test_preset_samples_are_upstreams(tiny) -> None:
    """With the coupled randomness (module docstring) migbench's sampler returns upstream's ids;
    the tempered confidence (Google's log p of the drawn-from softmax) does not."""
    upstream = load_file(FIXTURE)
    for seed in (0, 1):
        ids = build_sampler(autonat(), tiny)(LABELS, torch.Generator().manual_seed(seed))
        assert torch.equal(ids, upstream[f"preset_seed{seed}"])
        tempered = build_sampler(autonat(confidence="tempered"), tiny)(LABELS, torch.Generator().manual_seed(seed))
        assert not torch.equal(tempered, upstream[f"preset_seed{seed}"])


def test_preset_costs_16_passes_on_toy() -> None:
    """Both passes at every step, also at s = 1e-4: 16 per image at T = 8, as upstream. A step at
    s = 0 runs no unconditional pass here (upstream still runs it: finding F10)."""
    stack = toy()
    sampler = build_sampler(autonat(), stack)
    ids = sampler(torch.tensor([1, 2, 3]), torch.Generator().manual_seed(0))
    assert (ids == stack.backbone.layout.mask_id).sum() == 0
    assert sampler.nfe_per_image() == {"backbone": 16.0, "total": 16.0}
    # toy has 64 tokens: floor(64 r_k) stay masked
    assert masked_after_steps(AUTONAT_T8["maskgit.ratios"], 8, 64) == [61, 56, 50, 47, 39, 26, 16, 0]
    zero_first = (0.0, *AUTONAT_T8["maskgit.cfg_scales"][1:])
    sampler = build_sampler(autonat(cfg_scales=zero_first), stack)
    sampler(torch.tensor([1, 2, 3]), torch.Generator().manual_seed(0))
    assert sampler.nfe_per_image()["total"] == 15.0


def test_untempered_confidence_by_hand() -> None:
    """K = 3, logits (2, 1, 0) at the one masked position, token 0 drawn: untempered log p is
    2 - log(e^2 + e + 1) = -0.40761; the tempered one (T = 2, logits (1, 0.5, 0)) would be
    1 - log(e + e^0.5 + 1) = -0.70141."""
    masked = torch.tensor([[True, False]])
    info = StepInfo(step=7, num_steps=8, t=0.1, s=0.0, masked_before=1, masked_after=0, num_tokens=2)
    state = SampleState(ids=torch.tensor([[3, 1]]), masked=masked, labels=torch.tensor([0]), info=info,
                        generator=torch.Generator(), backbone=toy().backbone, nfe={})
    state.guided = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 5.0, 0.0]]])
    candidates = torch.tensor([[0, 1]])
    by_hand = 2.0 - math.log(math.e**2 + math.e + 1.0)
    assert by_hand == pytest.approx(-0.40761, abs=1e-5)
    torch.testing.assert_close(guided_log_p(candidates, state), torch.tensor([[by_hand, 0.0]]))
    tempered_logp = torch.tensor([[1.0 - math.log(math.e + math.e**0.5 + 1.0), 0.0]])
    for confidence, expected in (("untempered", torch.tensor([[by_hand, 0.0]])), ("tempered", tempered_logp)):
        recipe = resolve("maskgit", {"maskgit.confidence": confidence, "maskgit.steps": 2,
                                     "maskgit.temperatures": (2.0, 2.0), "maskgit.choice_temperature": 0.0})
        scorer = build_sampler(recipe, toy()).scorer
        torch.testing.assert_close(scorer(candidates, tempered_logp, state), expected)


def test_defaults_leave_descriptions_and_samples_as_they_were() -> None:
    """Empty lists and ``tempered`` are today's sampler: left out of the description (run
    hashes), and lists of the scalar schedules' values give the scalar knobs' samples."""
    described = resolve("maskgit").describe()["configs"]["maskgit"]
    assert list(described) == ["steps", "schedule", "ratios", "temperature", "temperature_mode",
                               "choice_temperature", "choice_anneal", "cfg_scale", "cfg_schedule", "cfg_convention"]
    explicit = {"maskgit.choice_temperatures": (), "maskgit.temperatures": (), "maskgit.cfg_scales": (),
                "maskgit.confidence": "tempered"}
    assert resolve("maskgit", explicit).describe() == resolve("maskgit").describe()
    assert "confidence" in resolve("maskgit", {"maskgit.confidence": "untempered"}).describe()["configs"]["maskgit"]
    assert MaskGITConfig().choice_temperatures == MaskGITConfig().temperatures == MaskGITConfig().cfg_scales == ()

    stack = toy()
    labels = torch.tensor([0, 3, -1, 9])
    scalar = {"maskgit.temperature": 0.8, "maskgit.cfg_scale": 0.5, "maskgit.cfg_schedule": "linear"}
    lists = {"maskgit.temperatures": (0.8,) * 8, "maskgit.cfg_scales": tuple(0.5 * k / 8 for k in range(8)),
             "maskgit.choice_temperatures": tuple(choice_temperature(4.5, k, 8) for k in range(8))}
    one = build_sampler(resolve("maskgit", scalar), stack)(labels, torch.Generator().manual_seed(2))
    other = build_sampler(resolve("maskgit", lists), stack)(labels, torch.Generator().manual_seed(2))
    assert torch.equal(one, other)
    # temperature 1: the untempered and tempered log p are one distribution
    plain = build_sampler(resolve("maskgit"), stack)(labels, torch.Generator().manual_seed(2))
    untempered = build_sampler(resolve("maskgit", {"maskgit.confidence": "untempered"}), stack)(
        labels, torch.Generator().manual_seed(2))
    assert torch.equal(plain, untempered)


def test_a_list_for_another_step_count_is_refused_when_sampling() -> None:
    recipe = resolve("emigm", {"emigm.steps": 4, "maskgit.temperatures": (1.0,) * 8})
    sampler = build_sampler(recipe, toy())
    with pytest.raises(ValueError, match="maskgit.temperatures has 8 values but the schedule runs 4 steps"):
        sampler(torch.tensor([0]), torch.Generator())
