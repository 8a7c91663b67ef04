"""TiTok's sampler as knobs of ``maskgit`` and the ``titok_l32``/``titok_b64``/``titok_s128`` presets.

Upstream: bytedance/1d-tokenizer @ 942a96fbdd873780179d1b78d5462911528bf8c8,
``modeling/maskgit.py`` ``ImageBert.generate`` with the released settings of
``configs/infer/TiTok/titok_{l32,b64,s128}.yaml`` and ``softmax_temperature_annealing=True`` (as
``sample_imagenet_titok.py`` calls it).

How ``fixtures/titok_generate_upstream_ids.safetensors`` was made (outside this repository, no
upstream code committed): upstream's ``generate`` was imported unmodified from the file above
(torch 2.14.1 CPU, transformers 4.53.3; ``modeling/__init__.py`` not run) and called as a plain
function whose ``self`` was a stand-in with ``mask_token_id`` 64, ``image_seq_len`` 256 and a
``forward(ids, condition, cond_drop_prob)`` returning this repository's ``valeoai_tiny()`` logits
(seed 0: 256 tokens, K = 64; ``cond_drop_prob`` 1.0 -> ``NULL_LABEL``), labels [0, 3, 7, 9]. Its
randomness was coupled to migbench's draw order by replacing the module's ``torch`` with a proxy
whose ``zeros_like(t).uniform_`` returned, for the token noise over t (B, N, K), uniforms from
``torch.Generator().manual_seed(seed)`` drawn as (B m, K) over the m masked rows (row-major) and,
for the confidence noise (B, N), uniforms (B, N) from the same generator, each clamped to
[1e-20, 1 - 1e-7] as :func:`migbench.rng.gumbel` does (seeds 0 and 1). Recorded: the final ids
(``{l32,b64,s128}.seed{0,1}.ids``, (4, 256) int16); the passes run (``.nfe``) and whether step k ran
the unconditional pass (``.uncond_per_step``); with a probe ``forward`` returning all-ones logits,
the processed logits 1 / T_k, stored as the softmax temperature T_k (``.softmax_temperature``,
float64); with conditional ones and unconditional zeros, the processed logits
(``.cfg_combined_times_inv_t``: (1 + g_k) / T_k in the linear mode, w_k / T_k in power-cosine).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from migbench.backbones.toy import toy
from migbench.backbones.valeoai import valeoai_tiny
from migbench.methods.maskgit import (
    TITOK_B64,
    TITOK_L32,
    TITOK_S128,
    MaskGITConfig,
    annealed_temperature,
)
from safetensors.torch import load_file

from migbench.guidance import StepInfo
from migbench.recipe import build_sampler, expand_preset, presets, resolve
from migbench.sampler import SampleState
from migbench.slots import choice_gumbel_max

FIXTURE = load_file(str(Path(__file__).parent / "fixtures" / "titok_generate_upstream_ids.safetensors"))
LABELS = torch.tensor([0, 3, 7, 9])
RELEASED = {"l32": (8, 9.5, 4.5, "linear"), "b64": (8, 11.0, 3.0, "linear"), "s128": (64, 2.8, 6.9, "power-cosine")}


@pytest.fixture(scope="module")
def tiny():
    return valeoai_tiny()


def titok(name: str, **extra: object):
    return resolve("maskgit", expand_preset(f"titok_{name}", {f"maskgit.{k}": v for k, v in extra.items()}))


def test_presets_are_the_released_yamls() -> None:
    assert (presets()["titok_l32"], presets()["titok_b64"], presets()["titok_s128"]) == (TITOK_L32, TITOK_B64, TITOK_S128)
    for name, (steps, tau0, scale, decay) in RELEASED.items():
        config = titok(name).config("maskgit")
        assert (config.steps, config.choice_temperature, config.cfg_scale, config.cfg_schedule) == (steps, tau0, scale,
                                                                                                     decay)
        assert (config.schedule, config.choice_anneal, config.token_draw, config.confidence,
                config.temperature_anneal) == ("arccos", "linear", "choice-gumbel", "logit", "titok")
    s128 = titok("s128").config("maskgit")
    assert (s128.cfg_convention, s128.cfg_power, s128.cfg_unguided_pass) == ("muse", 3.0, "run")
    assert titok("b64").config("maskgit").cfg_convention == "maskgit"


@pytest.mark.parametrize("name", list(RELEASED))
def test_per_step_values_and_passes_are_upstreams(tiny, name: str) -> None:
    """Softmax temperature, CFG scale and which steps run the unconditional pass, per step."""
    sampler = build_sampler(titok(name), tiny)
    plan = sampler.schedule.plan(256, torch.Generator())
    (temperature,) = sampler.processors
    (cfg,) = sampler.terms
    ones = torch.ones(1, 1, 1)
    upstream_t = FIXTURE[f"{name}.softmax_temperature"]
    combined = FIXTURE[f"{name}.cfg_combined_times_inv_t"].double()
    runs = []
    for info, t in zip(plan, upstream_t.tolist(), strict=True):
        state = SampleState(ids=torch.zeros(1, 256, dtype=torch.long), masked=torch.ones(1, 256, dtype=torch.bool),
                            labels=LABELS[:1], info=info, generator=torch.Generator(), backbone=tiny.backbone, nfe={})
        assert 1.0 / temperature(ones, state).item() == pytest.approx(t, rel=1e-6)
        # upstream: (1 + g) / T (linear, c + g (c - u)); w / T (power-cosine, u + w (c - u)), our s = w - 1
        assert 1.0 + cfg.scale_at(info) == pytest.approx(combined[info.step].item() * t, rel=1e-6, abs=1e-6)
        runs.append(cfg.scale_at(info) != 0.0 or cfg.run_unguided)
    assert runs == FIXTURE[f"{name}.uncond_per_step"].tolist()


@pytest.mark.parametrize("name", list(RELEASED))
def test_preset_samples_and_nfe_are_upstreams(tiny, name: str) -> None:
    """With the coupled randomness (module docstring) the preset returns upstream's ids and runs its
    passes: 15, 15 and 128 per image (the power-cosine step 0 runs both passes, F10)."""
    for seed in (0, 1):
        sampler = build_sampler(titok(name), tiny)
        ids = sampler(LABELS, torch.Generator().manual_seed(seed))
        assert torch.equal(ids, FIXTURE[f"{name}.seed{seed}.ids"].long())
        assert sampler.nfe_per_image() == {"backbone": float(FIXTURE[f"{name}.nfe"]), "total": float(FIXTURE[f"{name}.nfe"])}
    assert [int(FIXTURE[f"{n}.nfe"]) for n in RELEASED] == [15, 15, 128]


@pytest.mark.parametrize("name", ["b64", "l32"])
def test_the_tiny_titok_generator_replays_upstreams_generate(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Upstream's ``generate`` on the tiny ImageBert golden weights with its own random draws
    (``fixtures/titok_generate_upstream.safetensors``, tests/test_titok_generators.py): our sampler
    on the same weights, fed upstream's uniforms in place of its Gumbel draws (the token noise of
    the masked rows, then the confidence noise, at every step; none is drawn for the confidence
    at the last step, where tau is 0), returns upstream's ids and runs its 15 passes."""
    from migbench.backbones.titok import titok_tiny
    from migbench.backbones.titok.image_bert import ImageBert, ImageBertConfig
    from migbench.methods import maskgit

    from migbench import slots
    from migbench.api import Stack
    from migbench.checkpoints import load_strict

    folder = Path(__file__).parent / "fixtures"
    golden = load_file(str(folder / "titok_image_bert_tiny.safetensors"))
    record = {k.removeprefix(f"{name}."): v for k, v in
              load_file(str(folder / "titok_generate_upstream.safetensors")).items() if k.startswith(f"{name}.")}
    backbone = ImageBert(ImageBertConfig.tiny()).eval()
    load_strict(backbone, {k.removeprefix("state."): v for k, v in golden.items() if k.startswith("state.")}, "tiny")
    base = titok_tiny()
    stack = Stack(name="titok_golden", tokenizer=base.tokenizer, backbone=backbone, dataset=base.dataset,
                  weight_hashes={"titok_golden": "fixture"})
    mask = backbone.layout.mask_id
    before = torch.cat([torch.full((1, *record["ids"].shape), mask), record["ids_per_step"][:-1]])
    calls: list[torch.Size] = []

    def upstream_gumbel(shape: torch.Size, generator: torch.Generator, device: object) -> torch.Tensor:
        step, kind = divmod(len(calls), 2)
        calls.append(torch.Size(shape))
        u = record["confidence_uniform"][step] if kind else record["token_uniform"][step][before[step] == mask]
        assert u.shape == shape
        return -torch.log((-torch.log(u.clamp(min=1e-20))).clamp(min=1e-20))  # upstream's gumbel_noise

    monkeypatch.setattr(slots, "gumbel", upstream_gumbel)
    monkeypatch.setattr(maskgit, "gumbel", upstream_gumbel)
    sampler = build_sampler(titok(name), stack)
    ids = sampler(record["labels"], torch.Generator())
    assert torch.equal(ids, record["ids"]) and len(calls) == 2 * 8 - 1
    assert sampler.nfe_per_image()["total"] == float(record["passes"].sum()) == 15.0


def test_each_titok_convention_matters(tiny) -> None:
    """Google's draw and confidence in place of TiTok's change the samples; the skipped step-0 pass
    does not (only the NFE: 127)."""
    reference = FIXTURE["b64.seed0.ids"].long()
    for knob, value in (("token_draw", "softmax"), ("confidence", "tempered"), ("temperature_anneal", "constant")):
        ids = build_sampler(titok("b64", **{knob: value}), tiny)(LABELS, torch.Generator().manual_seed(0))
        assert not torch.equal(ids, reference), knob
    sampler = build_sampler(titok("s128", cfg_unguided_pass="skip"), tiny)
    ids = sampler(LABELS, torch.Generator().manual_seed(0))
    assert torch.equal(ids, FIXTURE["s128.seed0.ids"].long())
    assert sampler.nfe_per_image()["total"] == 127.0


def test_annealed_temperature_by_hand() -> None:
    """T_k = 0.5 + 0.8 (1 - (k+1)/T): 1.2 at step 0 of 8, 0.5 at the last; divided (divisor)."""
    logits = torch.tensor([[[2.4, -1.2]]])
    first = StepInfo(step=0, num_steps=8, t=1.0, s=0.875, masked_before=1, masked_after=1, num_tokens=1)
    last = StepInfo(step=7, num_steps=8, t=0.125, s=0.0, masked_before=1, masked_after=0, num_tokens=1)
    torch.testing.assert_close(annealed_temperature(logits, 1.0, "divisor", first), torch.tensor([[[2.0, -1.0]]]))
    torch.testing.assert_close(annealed_temperature(logits, 1.0, "divisor", last), torch.tensor([[[4.8, -2.4]]]))
    torch.testing.assert_close(annealed_temperature(logits, 2.0, "multiplier", last), torch.tensor([[[2.4, -1.2]]]))


def test_choice_gumbel_draw_and_logit_confidence_by_hand(tiny) -> None:
    """tau = 0: the argmax of the processed logits; the logit confidence is that logit (+ tau G)."""
    info = StepInfo(step=7, num_steps=8, t=0.125, s=0.0, masked_before=2, masked_after=0, num_tokens=3)
    logits = torch.tensor([[[0.0, 3.0, 1.0], [5.0, 0.0, 0.0], [0.0, 0.0, 7.0]]])
    masked = torch.tensor([[True, False, True]])
    state = SampleState(ids=torch.tensor([[9, 1, 9]]), masked=masked, labels=LABELS[:1], info=info,
                        generator=torch.Generator().manual_seed(0), backbone=tiny.backbone, nfe={})
    tokens, logp = choice_gumbel_max(logits, state, 0.0)
    assert tokens.tolist() == [[1, 1, 2]]  # position 1 is kept
    expected = torch.tensor([[3.0 - math.log(math.exp(3) + math.e + 1), 0.0, 7.0 - math.log(math.exp(7) + 2)]])
    torch.testing.assert_close(logp, expected)
    sampler = build_sampler(titok("b64"), tiny)
    state.processed = logits
    assert sampler.scorer(tokens, logp, state)[0, [0, 2]].tolist() == [3.0, 7.0]  # tau_7 = 0: no noise


def test_a_zero_scale_pass_run_anyway_changes_nothing_but_the_nfe() -> None:
    stack = toy()
    labels = torch.tensor([1, 2, 3])
    muse = {"maskgit.cfg_scale": 1.0, "maskgit.cfg_convention": "muse"}  # u + 1 (c - u) = c
    skip = build_sampler(resolve("maskgit", muse), stack)
    run = build_sampler(resolve("maskgit", {**muse, "maskgit.cfg_unguided_pass": "run"}), stack)
    assert torch.equal(skip(labels, torch.Generator().manual_seed(1)), run(labels, torch.Generator().manual_seed(1)))
    assert (skip.nfe_per_image()["total"], run.nfe_per_image()["total"]) == (8.0, 16.0)


def test_defaults_leave_descriptions_unchanged() -> None:
    explicit = {"maskgit.token_draw": "softmax", "maskgit.temperature_anneal": "constant", "maskgit.cfg_power": 3.0,
                "maskgit.cfg_unguided_pass": "skip"}
    assert resolve("maskgit", explicit).describe() == resolve("maskgit").describe()
    assert "token_draw" in resolve("maskgit", {"maskgit.token_draw": "choice-gumbel"}).describe()["configs"]["maskgit"]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"temperatures": (1.0,) * 8, "temperature_anneal": "titok"}, "both set the temperature at each step"),
    ({"cfg_power": 0.0}, r"cfg_power must lie in \(0, 100\]"),
    ({"token_draw": "gumbel"}, "token_draw"),
    ({"confidence": "logits"}, "confidence"),
])
def test_bad_titok_knobs_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MaskGITConfig(**overrides)
