"""CPU samples stay bit-identical: sampled ids of every method against a recorded fixture.

Committed results are keyed by a run hash that includes ``SAMPLER_VERSION`` and the method
versions, so a change of the sampler that alters CPU samples for a seed must bump one of them.
``tests/fixtures/sampler_ids.safetensors`` holds the ids (B, N) of two small batches per case,
recorded with the code *before* the host-sync removal (commit d27d994, torch 2.14.1 CPU); this
test fails on any bit that moved. The ``toy_ka_mig`` cases were re-recorded when the toy's KA-MIG
parts became ``KAMIG.random_parts`` (other random numbers, same sampler: the old parts still
gave the recorded ids first). The committed Fashion-MNIST stacks with their committed method
weights and the ``toy`` stack with random trained parts are both covered, in fp32 and bf16.
``toy_token_critic`` was re-recorded when its random critic became
``TokenCriticMethod.random_parts`` (#16: other parts, same sampler; with the earlier parts its ids
were unchanged).

Bits depend on the CPU kind and torch version (the fixture's metadata names them), so the test
runs only where the fixture was recorded and is marked slow: after changing the sampler, run
``pytest -m slow tests/test_samples_unchanged.py`` on that machine kind. Re-record (only
together with a version bump): ``MIGBENCH_RECORD_SAMPLES=1 pytest -m slow`` this file.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import pytest
import torch
from migbench.backbones.fmnist import fmnist, fmnist_emigm
from migbench.backbones.toy import toy
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from migbench.api import Stack
from migbench.precision import autocast
from migbench.recipe import build_sampler, resolve
from migbench.rng import batch_generator

FIXTURE = Path(__file__).parent / "fixtures" / "sampler_ids.safetensors"
RECORD = os.environ.get("MIGBENCH_RECORD_SAMPLES") == "1"
LABELS = torch.tensor([0, 3, -1, 9, 5, 7, 2, -1])  # two batches of 4, the unconditional label too
BATCH = 4
KA_G_P_ONLY = {"ka_mig.weights": "fmnist_ka_mig_incompatibility", "ka_mig.cooccurrence": False,
               "ka_mig.semantic": False}
KA_HEAD_ONLY = {"ka_mig.weights": "fmnist_ka_mig_head", "ka_mig.cooccurrence": False,
                "ka_mig.semantic": False, "ka_mig.incompatibility": False}

# case -> (stack, methods, overrides, precision)
CASES: dict[str, tuple[str, list[str], dict[str, object], str]] = {
    "maskgit": ("fmnist", ["maskgit"], {}, "fp32"),
    "maskgit_cfg": ("fmnist", ["maskgit"], {"maskgit.cfg_scale": 0.5, "maskgit.choice_temperature": 2.0}, "fp32"),
    "maskgit_cfg_bf16": ("fmnist", ["maskgit"], {"maskgit.cfg_scale": 0.5}, "bf16"),
    "maskgit_compound": ("fmnist", ["maskgit"], {"maskgit.choice_anneal": "compound",
                                                 "maskgit.choice_temperature": 25.0,
                                                 "maskgit.temperature": 0.8}, "fp32"),
    "cfg_interval": ("fmnist", ["maskgit", "cfg_interval"], {"maskgit.cfg_scale": 2.0}, "fp32"),
    "halton": ("fmnist", ["halton"], {"halton.sm_temp_max": 1.5}, "fp32"),
    "halton_resample": ("fmnist", ["halton"], {"halton.resample_revealed": True}, "fp32"),
    "halton_bf16": ("fmnist", ["halton"], {}, "bf16"),
    "emigm": ("fmnist", ["emigm"], {"emigm.steps": 8, "maskgit.temperature": 0.8}, "fp32"),
    "emigm_16_interval": ("fmnist_emigm", ["emigm", "cfg_interval"],
                          {"maskgit.cfg_scale": 3.0, "maskgit.cfg_convention": "muse"}, "fp32"),
    "token_critic": ("fmnist", ["token_critic"], {}, "fp32"),
    "token_critic_gumbel": ("fmnist", ["token_critic"], {"token_critic.noise": "gumbel"}, "fp32"),
    "self_guidance": ("fmnist", ["self_guidance"], {"maskgit.choice_anneal": "compound",
                                                    "maskgit.choice_temperature": 25.0}, "fp32"),
    "ka_mig": ("fmnist", ["ka_mig"], {"maskgit.choice_temperature": 2.0}, "fp32"),
    "ka_mig_bf16": ("fmnist", ["ka_mig"], {}, "bf16"),
    "ka_mig_online": ("fmnist", ["ka_mig"], {"ka_mig.precompute": False}, "fp32"),
    "ka_mig_online_bf16": ("fmnist", ["ka_mig"], {"ka_mig.precompute": False}, "bf16"),
    "ka_mig_all_positions": ("fmnist", ["ka_mig"], {"ka_mig.negative_positions": "all"}, "fp32"),
    "ka_mig_g_p_only": ("fmnist", ["ka_mig"], KA_G_P_ONLY, "fp32"),
    "ka_mig_g_p_only_online": ("fmnist", ["ka_mig"], {**KA_G_P_ONLY, "ka_mig.precompute": False}, "fp32"),
    "ka_mig_head_only": ("fmnist", ["ka_mig"], KA_HEAD_ONLY, "fp32"),
    "ka_mig_self_guidance": ("fmnist", ["ka_mig", "self_guidance"], {"self_guidance.scale": 0.5}, "fp32"),
    "toy_maskgit_cfg": ("toy", ["maskgit"], {"maskgit.cfg_scale": 1.0}, "fp32"),
    "toy_halton": ("toy", ["halton"], {}, "fp32"),
    "toy_emigm": ("toy", ["emigm"], {"maskgit.cfg_scale": 1.0}, "fp32"),
    "toy_token_critic": ("toy", ["token_critic"], {}, "fp32"),
    "toy_self_guidance": ("toy", ["self_guidance"], {}, "fp32"),
    "toy_ka_mig": ("toy", ["ka_mig"], {"maskgit.cfg_scale": 1.0}, "fp32"),
    "toy_ka_mig_online": ("toy", ["ka_mig"], {"ka_mig.precompute": False, "maskgit.cfg_scale": 1.0}, "fp32"),
}


@cache
def load_stack(name: str) -> Stack:
    return {"fmnist": fmnist, "fmnist_emigm": fmnist_emigm, "toy": toy}[name]()


def sample_ids(case: str) -> torch.Tensor:
    """Ids (8, N) of ``case``: two batches of 4, batch j seeded by ``batch_generator(0, j)``."""
    stack_name, methods, overrides, precision = CASES[case]
    stack = load_stack(stack_name)
    sampler = build_sampler(resolve(methods, overrides), stack)
    out = []
    for j in range(len(LABELS) // BATCH):
        with autocast(precision, "cpu"):
            out.append(sampler(LABELS[j * BATCH:(j + 1) * BATCH], batch_generator(0, j)))
    return torch.cat(out)


def fixture_metadata() -> dict[str, str]:
    with safe_open(FIXTURE, "pt") as fixture:
        return fixture.metadata() or {}


def recorded_on() -> str:
    return fixture_metadata().get("machine", "unknown")


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_cpu_samples_are_bit_identical(case: str, request: pytest.FixtureRequest, machine: str,
                                       recorded_here) -> None:
    if not RECORD:
        recorded_here(recorded_on())
    if CASES[case][0] == "toy":
        request.getfixturevalue("toy_trained_parts")
    ids = sample_ids(case)
    if RECORD:
        recorded, metadata = (load_file(FIXTURE), fixture_metadata()) if FIXTURE.exists() else ({}, {})
        FIXTURE.parent.mkdir(exist_ok=True)
        save_file({**recorded, case: ids.to(torch.int16).contiguous()}, FIXTURE,
                  metadata={**metadata, "machine": machine})
        pytest.skip("recorded")
    expected = load_file(FIXTURE)[case].long()
    assert torch.equal(ids, expected), f"{case}: {(ids != expected).sum()} of {ids.numel()} ids changed"
