"""TiTok's 1-D tokenizer (``backbones/titok/tokenizer.py``) against the pinned upstream, without the real weights.

Fixtures, made once by a script run outside the repository against bytedance/1d-tokenizer commit
942a96fbdd873780179d1b78d5462911528bf8c8 in a throwaway environment (torch 2.14.1, omegaconf
2.4.0, einops 0.8.2, huggingface_hub 0.36.2); no upstream code is committed. The upstream modules
were loaded from their files without running the ``modeling`` package ``__init__``s (they import
the training losses): ``modules/base_model.py``, ``quantizer/quantizer.py`` (its training-only
``accelerate`` import stubbed), ``modules/maskgit_vqgan.py`` and ``titok.py`` unmodified, and
``modules/blocks.py`` executed with one insertion, ``"tiny": 32`` / ``2`` / ``2`` added to the six
width / num_layers / num_heads tables of ``TiTokEncoder`` and ``TiTokDecoder``.

- ``backbones/titok/keys/tokenizer_{l32,b64,s128}.json`` (the listings ``migbench import`` checks
  files against): ``TiTok(config)`` for ``configs/infer/TiTok/titok_{l32,b64,s128}.yaml``
  (``finetune_decoder`` True, so with the MaskGIT-VQGAN ``pixel_quantize`` and ``pixel_decoder``
  that ``TiTok.__init__`` hard-codes) built on ``meta``: every ``state_dict()`` name with its
  shape, in order, and the parameter count.
- ``fixtures/titok_tokenizer_tiny.safetensors`` (fp32): ``torch.manual_seed(20)``, then
  ``TiTok`` with ``codebook_size`` 64, ``token_size`` 12, ``use_l2_norm`` True,
  ``vit_enc_model_size`` = ``vit_dec_model_size`` = "tiny", ``vit_enc_patch_size`` 8,
  ``vit_dec_patch_size`` 2, ``num_latent_tokens`` 8, ``finetune_decoder`` True, ``crop_size`` 32
  (= :meth:`TiTokTokenizerConfig.tiny`). Its hard-coded full-size pixel modules were then
  replaced by tiny instances of the same upstream classes: ``VectorQuantizer(1024, 8, 0.25)``
  (1024 entries: the legacy decoder's 1024 output channels are hard-coded) and ``Decoder`` with
  channel_mult [1, 1], hidden_channels 32, num_res_blocks 2, z_channels 8, dropout 0 (factor 2,
  so the 16 x 16 decoder grid becomes 32 px). This departs from checkpoint_facts.md's recipe
  (channel_mult [1,1,2,2], z 32: 626k decoder parameters) to keep the file near 1 MB; the
  1024-channel ffn and GroupNorm's 32-channel minimum set what is left. Then, in
  ``named_parameters()`` order: every LayerNorm and GroupNorm gain redrawn as 1 + 0.2 N(0, 1);
  in ``pixel_decoder`` every bias as 0.1 N(0, 1), the convolution weights keeping their default
  draw; ``pixel_quantize.embedding.weight`` as 0.5 N(0, 1); every other parameter (the ViTs'
  weights, biases and tables, ``latent_tokens``, the 64 x 12 codebook) as 0.3 N(0, 1); ``.eval()``.
  ``state.*`` is that state dict (269,199 parameters, 120 tensors). With a generator seeded 23:
  ``inputs.images`` = U[0, 1) (3, 3, 32, 32), then ``inputs.random_ids`` = randint(0, 64) (2, 8).
  ``outputs.z`` = ``model.encoder(pixel_values=images, latent_tokens=model.latent_tokens)``
  (3, 12, 1, 8); ``outputs.ids`` = ``model.encode(images)[1]["min_encoding_indices"]`` (3, 1, 8);
  ``outputs.decoded`` / ``outputs.random_decoded`` = ``model.decode_tokens`` of those ids and of
  the random ids, all under ``no_grad``. The smallest gap between the nearest and second-nearest
  squared distance (unit vectors) over the 24 encoded tokens is 7.5e-3, far above fp32 error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from migbench.backbones.common.maskgit_vqgan import MaskGitVQGANConfig, to_open_muse
from migbench.backbones.titok.tokenizer import TiTokTokenizer, TiTokTokenizerConfig
from safetensors.torch import load_file

from migbench.api import Tokenizer
from migbench.checkpoints import CheckpointError, CheckpointSpec, expected_keys, load_strict

ROOT = Path(__file__).parents[1]
KEYS = ROOT / "backbones" / "titok" / "keys"
GOLDEN = load_file(str(Path(__file__).parent / "fixtures" / "titok_tokenizer_tiny.safetensors"))
STATE = {k.removeprefix("state."): v for k, v in GOLDEN.items() if k.startswith("state.")}
TINY = TiTokTokenizerConfig.tiny()
RELEASED = {"l32": (TiTokTokenizerConfig.l32, 692, 641_054_735, 32),
            "b64": (TiTokTokenizerConfig.b64, 404, 204_814_095, 64),
            "s128": (TiTokTokenizerConfig.s128, 308, 83_674_639, 128)}


def golden_model() -> TiTokTokenizer:
    model = TiTokTokenizer(TINY).eval()
    load_strict(model, STATE, "titok_tokenizer_tiny")
    return model


# --- 1. key listings ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(RELEASED))
def test_state_dict_is_upstreams_at_full_size(name: str) -> None:
    """Names (in order), shapes and parameter count of upstream's ``TiTok`` for each released
    configuration; the listing is package data that a checkpoint spec reads."""
    config, count, parameters, tokens = RELEASED[name]
    expected = json.loads((KEYS / f"tokenizer_{name}.json").read_text())
    with torch.device("meta"):
        model = TiTokTokenizer(config())
    state = model.state_dict()
    assert list(state) == list(expected["keys"])
    assert {k: list(v.shape) for k, v in state.items()} == expected["keys"]
    assert len(state) == count
    assert sum(p.numel() for p in model.parameters()) == expected["parameters"] == parameters
    assert "942a96fbdd873780179d1b78d5462911528bf8c8" in expected["provenance"]
    assert state["latent_tokens"].shape[0] == tokens and state["quantize.embedding.weight"].shape == (4096, 12)
    spec = CheckpointSpec(f"tokenizer_titok_{name}", "manual", "", listing=f"migbench.backbones.titok:keys/tokenizer_{name}.json")
    assert expected_keys(spec) == ({k: tuple(v) for k, v in expected["keys"].items()}, parameters)


def test_pixel_decoder_is_the_shared_vqgan_decoder_under_open_muse_names() -> None:
    """``pixel_decoder`` holds the common MaskGIT VQGAN decoder (MAGE's module names); its state
    dict is the open-muse decoder's listing under the ``pixel_decoder.`` prefix, and back."""
    open_muse = json.loads((ROOT / "backbones" / "common" / "keys" / "maskgit_vqgan_open_muse.json").read_text())
    decoder = {"pixel_" + k: v for k, v in open_muse["keys"].items() if k.startswith("decoder.")}
    with torch.device("meta"):
        model = TiTokTokenizer(TiTokTokenizerConfig.s128())
    state = {k: list(v.shape) for k, v in model.state_dict().items() if k.startswith("pixel_decoder.")}
    assert state == decoder and len(state) == 88
    ours = {n: p for n, p in model.named_parameters() if n.startswith("pixel_decoder.")}
    assert "pixel_decoder.mid.block_1.conv1.weight" in ours and "pixel_decoder.up.4.upsample.conv.bias" in ours
    assert list(to_open_muse(ours)) == list(state)


# --- 2. golden outputs ----------------------------------------------------------------------------

def test_encoder_output_and_ids_match_upstream() -> None:
    """z (upstream's (B, D, 1, L) as (B, L, D)) within 1e-4 (0 here) and the ids exactly."""
    model = golden_model()
    z = model.encode_latents(GOLDEN["inputs.images"])
    assert (z - GOLDEN["outputs.z"].squeeze(2).transpose(1, 2)).abs().max() <= 1e-4
    ids = model.encode(GOLDEN["inputs.images"])
    assert ids.dtype == torch.int64 and torch.equal(ids, GOLDEN["outputs.ids"].squeeze(1))


@pytest.mark.parametrize(("ids", "decoded"), [("outputs.ids", "outputs.decoded"),
                                              ("inputs.random_ids", "outputs.random_decoded")])
def test_decoded_images_match_upstream(ids: str, decoded: str) -> None:
    """``decode_raw`` is upstream's ``decode_tokens`` within 1e-4 (2.5e-5 here, the random pixel
    decoder amplifying rounding); ``decode`` is it clamped to [0, 1]."""
    model = golden_model()
    tokens = GOLDEN[ids].reshape(-1, TINY.num_latent_tokens)
    raw = model.decode_raw(tokens)
    assert raw.shape == GOLDEN[decoded].shape == (tokens.shape[0], 3, 32, 32)
    assert (raw - GOLDEN[decoded]).abs().max() <= 1e-4
    assert GOLDEN[decoded].min() < 0 and torch.equal(model.decode(tokens), raw.clamp(0.0, 1.0))


@pytest.mark.parametrize("build", ["to_empty", "assign"])
def test_a_model_built_on_meta_loads(build: str) -> None:
    """Built on ``meta`` then materialised (``to_empty`` + strict load, or ``assign=True``): the
    pixel decoder's renaming hooks serve both."""
    with torch.device("meta"):
        model = TiTokTokenizer(TINY)
    if build == "to_empty":
        model.to_empty(device="cpu")
        load_strict(model, STATE, "titok_tokenizer_tiny")
    else:
        model.load_state_dict(STATE, assign=True)
    assert torch.equal(model.eval().encode(GOLDEN["inputs.images"]), GOLDEN["outputs.ids"].squeeze(1))
    assert (model.decode_raw(GOLDEN["inputs.random_ids"]) - GOLDEN["outputs.random_decoded"]).abs().max() <= 1e-4


def test_state_dict_round_trips_and_refuses_mage_names() -> None:
    """Our ``state_dict`` is the fixture's (same keys, same tensors; safetensors sorts the keys,
    the listings check the order) and loads back; a
    state with the pixel decoder under MAGE's names does not fit."""
    model = golden_model()
    state = model.state_dict()
    assert sorted(state) == sorted(STATE) and all(torch.equal(state[k], STATE[k]) for k in STATE)
    fresh = TiTokTokenizer(TINY)
    load_strict(fresh, state, "round trip")
    assert torch.equal(fresh.pixel_decoder.mid.block_2.conv1.weight, STATE["pixel_decoder.mid.1.conv1.weight"])
    mage = {k.replace("pixel_decoder.mid.0.", "pixel_decoder.mid.block_1."): v for k, v in STATE.items()}
    with pytest.raises(CheckpointError, match="missing") as err:
        load_strict(fresh, mage, "mage names")
    assert "\n" not in str(err.value)


# --- 3. the Tokenizer contract --------------------------------------------------------------------

def test_tokenizer_contract() -> None:
    model = golden_model()
    assert isinstance(model, Tokenizer)
    assert (model.codebook_size, model.token_shape, model.image_shape) == (64, (8,), (3, 32, 32))
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ids = model.encode(images)
    assert ids.shape == (2, 8) and ids.dtype == torch.int64 and 0 <= int(ids.min()) and int(ids.max()) < 64
    out = model.decode(ids.to(torch.int32))
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
    described = json.loads(json.dumps(model.describe()))
    assert (described["kind"], described["num_latent_tokens"], described["pixel_vqgan"]["ch_mult"]) == \
        ("titok_tokenizer", 8, [1, 1])
    assert "942a96fbdd873780179d1b78d5462911528bf8c8" in described["upstream"]


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_shapes(name: str) -> None:
    config, _, _, tokens = RELEASED[name]
    with torch.device("meta"):
        model = TiTokTokenizer(config())
    assert (model.codebook_size, model.token_shape, model.image_shape) == (4096, (tokens,), (3, 256, 256))


@pytest.mark.parametrize(("call", "arg", "message"), [
    ("encode", torch.rand(2, 1, 32, 32), "shape"),
    ("encode", torch.rand(2, 3, 64, 64), "shape"),
    ("encode", torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "floating"),
    ("encode_latents", torch.rand(3, 32, 32), "shape"),
    ("decode", torch.zeros(2, 1, 8, dtype=torch.int64), "shape"),
    ("decode", torch.zeros(2, 7, dtype=torch.int64), "shape"),
    ("decode", torch.zeros(2, 8), "int64"),
    ("decode", torch.full((1, 8), 64), "lie in"),
    ("decode_raw", torch.full((1, 8), -1), "lie in"),
])
def test_bad_input_is_refused_in_one_line(call: str, arg: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        getattr(golden_model(), call)(arg)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("changes", "message"), [
    ({"vit_enc_model_size": "huge"}, "model size"),
    ({"vit_enc_patch_size": 5}, "multiple of the patch size"),
    ({"vit_dec_patch_size": 4}, "factor"),
    ({"pixel_vqgan": MaskGitVQGANConfig(n_embed=512)}, "1024 codes"),
])
def test_bad_config_is_refused_in_one_line(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        TiTokTokenizerConfig(**changes)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
