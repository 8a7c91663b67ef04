"""The Google MaskGIT VQGAN (``backbones/common/maskgit_vqgan.py``) against MAGE's and open-muse's upstream classes.

Fixtures, all made once in a throwaway environment outside the repository (torch 2.14.1; no
upstream code is committed) from two pinned upstreams: LeapLabTHU/ImprovedNAT at
2ca99946b2ad1969672d05213d269e1256249f6b (``taming.models.vqgan.VQModel``, MAGE's VQGAN, as
``taming.models.vqgan.get_model`` builds it from ``configs/vq-f16-jax.yaml``) and
huggingface/open-muse at 64e1afe033717d795866ab8204484705cd4dc3f7
(``muse.modeling_maskgit_vqgan.MaskGitVQGAN``, loaded from its file without running
``muse/__init__.py``; ImprovedNAT's ``taming/models/modeling_maskgit_vqgan.py`` is byte-identical).

- ``backbones/common/keys/maskgit_vqgan.json`` (the listing ``migbench import`` checks files
  against): ImprovedNAT's ``VQModel`` at full size with the yaml's ddconfig (double_z False,
  z_channels 256, resolution 256, in/out channels 3, ch 128, ch_mult [1,1,2,2,4],
  num_res_blocks 2, attn_resolutions [16], dropout 0), n_embed 1024, embed_dim 256: every
  ``state_dict()`` name with its shape, and the parameters' total size (54,515,587, 168 tensors).
- ``backbones/common/keys/maskgit_vqgan_open_muse.json`` (package data: what open-muse-named files
  are checked against): the same for open-muse's
  ``MaskGitVQGAN()`` at its defaults (the same sizes); it loaded :func:`to_open_muse` of the
  MAGE state dict strictly.
- ``fixtures/common_maskgit_vqgan_tiny.safetensors`` (fp32): ImprovedNAT's ``VQModel`` with
  :meth:`MaskGitVQGANConfig.tiny`'s ddconfig (z_channels 32, resolution 32, ch 32, ch_mult [2,1],
  num_res_blocks 2; n_embed 64, embed_dim 32) after ``torch.manual_seed(17)``; its default
  initialisation was then overwritten, in ``named_parameters()`` order, with 0.5·N(0,1) for the
  codebook, 1 + 0.2·N(0,1) for every GroupNorm scale and 0.1·N(0,1) for every bias (convolution
  weights keep their default draw). ``state.*`` is that state dict. open-muse's class built with
  the same sizes loaded :func:`to_open_muse` of it strictly; its ``state_dict()`` names are the
  file's ``open_muse_keys`` metadata. With a generator seeded 23, for side S = 32 then 64:
  ``imagesS`` = U[0,1) images (2, 3, S, S), then ``random_idsS`` = randint(0, 64) (2, S/2·S/2).
  From MAGE's class: ``idsS`` = ``encode(images)[-1][-1]`` reshaped (2, S/2·S/2) (ImprovedNAT's
  ``train.py``), ``decodedS`` / ``random_decodedS`` = ``decode_code`` of ids reshaped
  (2, S/2, S/2) (``libs/nat_misc.py``). From open-muse's: ``open_muse_idsS`` = ``encode(images)[1]``,
  ``open_muse_decodedS`` / ``open_muse_random_decodedS`` = ``decode_code`` of (2, S/2·S/2) ids.
  The two upstreams give equal ids and decodes within 5.6e-6. The smallest gap between the
  nearest and second-nearest squared code distance over all encoded positions is 3.2e-3
  (S = 32) and 6.5e-5 (S = 64), far above fp32 error, so the ids are well defined.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from migbench.backbones.common.maskgit_vqgan import (
    OPEN_MUSE_RENAMES,
    Decoder,
    MaskGitVQGAN,
    MaskGitVQGANConfig,
    from_open_muse,
    to_open_muse,
)
from safetensors import safe_open
from safetensors.torch import load_file

from migbench.api import Tokenizer
from migbench.checkpoints import CheckpointSpec, expected_keys, load_strict

FIXTURES = Path(__file__).parent / "fixtures"
LISTINGS = Path(__file__).parents[1] / "backbones" / "common" / "keys"
LISTING = Path(__file__).parents[1] / "backbones" / "common" / "keys" / "maskgit_vqgan.json"
UPSTREAMS = [("", "ids", "decoded", "random_decoded"),
             ("open_muse", "open_muse_ids", "open_muse_decoded", "open_muse_random_decoded")]


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "common_maskgit_vqgan_tiny.safetensors"))


def mage_state(golden: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("state."): v for k, v in golden.items() if k.startswith("state.")}


def tiny(golden: dict[str, torch.Tensor], image_size: int = 32, naming: str = "") -> MaskGitVQGAN:
    """The tiny model from the golden weights, given under MAGE's names or renamed to open-muse's and back."""
    state = mage_state(golden)
    model = MaskGitVQGAN(MaskGitVQGANConfig.tiny(), image_size=image_size)
    load_strict(model, from_open_muse(to_open_muse(state)) if naming else state, "tiny")
    return model.eval()


def test_full_size_keys_shapes_and_count_match_upstream() -> None:
    listing = json.loads(LISTING.read_text())
    with torch.device("meta"):
        model = MaskGitVQGAN()
    ours = {name: list(t.shape) for name, t in model.state_dict().items()}
    assert sorted(set(ours) ^ set(listing["keys"])) == []
    assert ours == listing["keys"]
    assert len(ours) == 168
    assert sum(p.numel() for p in model.parameters()) == listing["parameters"] == 54_515_587
    spec = CheckpointSpec("mage_vqgan", "manual", "", listing="migbench.backbones.common:keys/maskgit_vqgan.json")
    assert expected_keys(spec) == ({k: tuple(v) for k, v in listing["keys"].items()}, 54_515_587)


def test_open_muse_renaming_is_exactly_upstreams_names() -> None:
    """Full size: the renamed MAGE listing is open-muse's listing, shapes included, and back."""
    mage = json.loads(LISTING.read_text())["keys"]
    open_muse = json.loads((LISTINGS / "maskgit_vqgan_open_muse.json").read_text())["keys"]
    assert to_open_muse(mage) == open_muse
    assert from_open_muse(open_muse) == mage
    assert len({k for k in open_muse if k not in mage}) == 32  # 4 mid blocks x 6 + 4 upsample convs x 2


def test_open_muse_renaming_of_the_tiny_golden(golden: dict[str, torch.Tensor]) -> None:
    state = mage_state(golden)
    with safe_open(str(FIXTURES / "common_maskgit_vqgan_tiny.safetensors"), "pt") as f:
        upstream_keys = json.loads(f.metadata()["open_muse_keys"])
    renamed = to_open_muse(state)
    assert sorted(renamed) == sorted(upstream_keys)
    assert all(renamed[new] is state[old] for new, old in zip(renamed, state, strict=True))  # rename only
    assert list(from_open_muse(renamed)) == list(state)


def test_renaming_works_under_any_prefix_and_refuses_mixed_names() -> None:
    """TiTok keeps the decoder alone under ``pixel_decoder.``; a name already renamed is refused."""
    t = torch.zeros(1)
    mage = {"pixel_decoder.mid.block_2.conv1.weight": t, "pixel_decoder.up.3.upsample.conv.bias": t,
            "pixel_decoder.conv_in.weight": t}
    assert list(to_open_muse(mage)) == ["pixel_decoder.mid.1.conv1.weight", "pixel_decoder.up.3.upsample_conv.bias",
                                        "pixel_decoder.conv_in.weight"]
    assert len(OPEN_MUSE_RENAMES) == 3
    with pytest.raises(ValueError, match="already has open-muse names") as err:
        to_open_muse({**mage, "decoder.mid.0.conv1.weight": t})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="already has MAGE names"):
        from_open_muse({"decoder.mid.block_1.conv1.weight": t})


@pytest.mark.parametrize("naming, ids_key, decoded_key, random_key", UPSTREAMS)
@pytest.mark.parametrize("size", [32, 64])
def test_tiny_matches_both_upstreams(golden: dict[str, torch.Tensor], size: int, naming: str, ids_key: str,
                                     decoded_key: str, random_key: str) -> None:
    """Equal ids and decoded images within 1e-4 (about 3e-6 here) against MAGE's and open-muse's
    class; the weights reach ours through the rename map and back for open-muse. S = 64 checks
    that weights made for 32 serve twice the side."""
    model = tiny(golden, size, naming)
    assert torch.equal(model.encode(golden[f"images{size}"]), golden[f"{ids_key}{size}"])
    for ids, out in ((f"{ids_key}{size}", f"{decoded_key}{size}"), (f"random_ids{size}", f"{random_key}{size}")):
        raw = model.decode_raw(golden[ids])
        assert (raw - golden[out]).abs().max() <= 1e-4
        assert torch.equal(model.decode(golden[ids]), raw.clamp(0, 1))


def test_decoder_stands_alone(golden: dict[str, torch.Tensor]) -> None:
    """The decoder alone (TiTok's pixel decoder) from codebook rows, and ``decode_latents``."""
    model = tiny(golden)
    state = mage_state(golden)
    decoder = Decoder(MaskGitVQGANConfig.tiny()).eval()
    load_strict(decoder, {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")}, "dec")
    ids = golden["random_ids32"]
    z = state["quantize.embedding.weight"][ids].reshape(2, 16, 16, 32).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        assert torch.equal(decoder(z), model.decode_raw(ids))
    assert torch.equal(model.decode_latents(z), model.decode_raw(ids))
    assert torch.equal(model.quantize.lookup(ids, (16, 16)), z)


def test_tokenizer_contract(golden: dict[str, torch.Tensor]) -> None:
    model = tiny(golden)
    assert isinstance(model, Tokenizer)
    assert (model.codebook_size, model.token_shape, model.image_shape) == (64, (16, 16), (3, 32, 32))
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = model.encode(images)
    assert ids.shape == (3, 256) and ids.dtype == torch.int64
    assert 0 <= int(ids.min()) and int(ids.max()) < 64
    out = model.decode(ids)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1 and 0 < out.std()
    described = json.loads(json.dumps(model.describe()))
    assert (described["kind"], described["ch_mult"], described["image_size"]) == ("maskgit_vqgan", [2, 1], 32)
    with torch.device("meta"):
        full = MaskGitVQGAN()
    assert (full.token_shape, full.image_shape, full.codebook_size) == ((16, 16), (3, 256, 256), 1024)
    assert full.quantize.embedding.weight.shape == (1024, 256)


@pytest.mark.parametrize("call, arg, message", [
    ("encode", torch.rand(2, 1, 32, 32), "shape"),
    ("encode", torch.rand(2, 3, 64, 64), "shape"),
    ("encode", torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "floating"),
    ("decode", torch.zeros(2, 255, dtype=torch.int64), "shape"),
    ("decode", torch.zeros(2, 16, 16, dtype=torch.int64), "shape"),
    ("decode", torch.zeros(2, 256), "int64"),
    ("decode", torch.full((1, 256), 64), "lie in"),
    ("decode", torch.full((1, 256), -1), "lie in"),
    ("decode_latents", torch.zeros(2, 32, 8, 8), "shape"),
    ("decode_latents", torch.zeros(2, 16, 16, 16), "shape"),
])
def test_bad_input_is_refused_in_one_line(golden: dict[str, torch.Tensor], call: str, arg: torch.Tensor,
                                          message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        getattr(tiny(golden), call)(arg)
    assert "\n" not in str(err.value)


def test_image_size_must_fit_the_downsampling() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        MaskGitVQGAN(image_size=100)
