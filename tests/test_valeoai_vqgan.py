"""valeoai v1.0's taming VQGAN (``backbones/valeoai/taming_vqgan.py``) against upstream, without the real weights.

Fixtures, both made once from valeoai/Maskgit-pytorch v1.0 at commit
674ef1d934963b7550ad9068015e705a525ceecb in a throwaway environment outside the repository
(torch 2.14.1, ``pytorch_lightning`` replaced by a stub whose ``LightningModule`` is ``nn.Module``;
no upstream code is committed):

- ``backbones/valeoai/keys/taming_vqgan.json`` (the listing ``migbench import`` checks files against): ``Network.Taming.models.vqgan.VQModel`` built at full
  size with taming's ``vqgan_imagenet_f16_1024`` ddconfig (double_z False, z_channels 256,
  resolution 256, in/out channels 3, ch 128, ch_mult [1,1,2,2,4], num_res_blocks 2,
  attn_resolutions [16], dropout 0), n_embed 1024, embed_dim 256: every ``state_dict()`` name with
  its shape, and the sum of the parameters' sizes (72,141,699). v1.0's ``VQModel`` builds no
  ``loss``; the released checkpoint's ``loss.*`` keys are ignored on import.
- ``fixtures/valeoai_taming_vqgan_tiny.safetensors`` (fp32): the same class with
  ``TamingVQGANConfig.tiny()``'s ddconfig (z_channels 32, resolution 32, ch 32, ch_mult [2,1],
  num_res_blocks 1, attn_resolutions [16]; n_embed 64, embed_dim 32) after
  ``torch.manual_seed(17)``; its default initialisation was then overwritten, in
  ``named_parameters()`` order, with 0.25·N(0,1) for the codebook, 1 + 0.2·N(0,1) for every
  GroupNorm scale and 0.1·N(0,1) for every bias (convolution weights keep their default draw).
  ``state.*`` is that state dict. With a generator seeded 23, for side S = 32 then 64:
  ``imagesS`` = U[0,1) images (2, 3, S, S); ``idsS`` = the indices of upstream's
  ``VQModel.encode(2·images − 1)``, reshaped (2, S/2·S/2); ``decodedS`` = ``decode_code`` of
  them as (2, S/2, S/2); ``random_idsS`` = randint(0, 64) (2, S/2·S/2) and ``random_decodedS``
  their ``decode_code``. The smallest gap between the nearest and second-nearest squared code
  distance over all encoded positions is 1.1e-3 (S = 32) and 8.5e-5 (S = 64), far above fp32
  error, so the ids are well defined. S = 64 checks that the weights made for 32 serve twice the
  side (as the 256 px weights serve 512 px).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from migbench.backbones.valeoai.taming_vqgan import TamingVQGAN, TamingVQGANConfig
from safetensors.torch import load_file

from migbench.api import Tokenizer
from migbench.checkpoints import CheckpointSpec, extract_state, load_strict

FIXTURES = Path(__file__).parent / "fixtures"
LISTINGS = Path(__file__).parents[1] / "backbones" / "valeoai" / "keys"


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "valeoai_taming_vqgan_tiny.safetensors"))


def tiny(golden: dict[str, torch.Tensor], image_size: int = 32) -> TamingVQGAN:
    model = TamingVQGAN(TamingVQGANConfig.tiny(), image_size=image_size)
    load_strict(model, {k.removeprefix("state."): v for k, v in golden.items() if k.startswith("state.")}, "tiny")
    return model.eval()


def test_full_size_keys_shapes_and_count_match_upstream() -> None:
    listing = json.loads((LISTINGS / "taming_vqgan.json").read_text())
    with torch.device("meta"):
        model = TamingVQGAN()
    ours = {name: list(t.shape) for name, t in model.state_dict().items()}
    assert sorted(set(ours) ^ set(listing["keys"])) == []
    assert ours == listing["keys"]
    assert sum(p.numel() for p in model.parameters()) == listing["parameters"] == 72_141_699


@pytest.mark.parametrize("size", [32, 64])
def test_tiny_matches_upstream(golden: dict[str, torch.Tensor], size: int) -> None:
    """Equal ids (upstream flattens its (B, h, w) indices row-major, as the contract wants) and
    decoded images within 1e-4 (about 2e-6 here; F.scaled_dot_product_attention stands in for
    upstream's bmm-softmax-bmm)."""
    model = tiny(golden, size)
    assert torch.equal(model.encode(golden[f"images{size}"]), golden[f"ids{size}"])
    for ids, out in ((f"ids{size}", f"decoded{size}"), (f"random_ids{size}", f"random_decoded{size}")):
        raw = model.decode_raw(golden[ids])
        assert (raw - golden[out]).abs().max() <= 1e-4
        assert torch.equal(model.decode(golden[ids]), ((raw + 1) / 2).clamp(0, 1))


def test_loads_through_a_training_checkpoint_layout(golden: dict[str, torch.Tensor]) -> None:
    """The released ``last.ckpt`` keeps the weights under ``state_dict`` beside ``loss.*``."""
    state = {k.removeprefix("state."): v for k, v in golden.items() if k.startswith("state.")}
    raw = {"state_dict": {**state, "loss.discriminator.main.0.weight": torch.ones(2)}, "global_step": 3}
    spec = CheckpointSpec("tiny_vqgan", "manual", "MIT", container="state_dict", ignore=("loss.*",))
    model = TamingVQGAN(TamingVQGANConfig.tiny())
    load_strict(model, extract_state(spec, raw), spec.name)
    assert torch.equal(model.quantize.embedding.weight, state["quantize.embedding.weight"])


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
    assert json.loads(json.dumps(model.describe()))["ch_mult"] == [2, 1]
    with torch.device("meta"):
        assert TamingVQGAN(image_size=512).token_shape == (32, 32)
        assert TamingVQGAN(image_size=256).image_shape == (3, 256, 256)


@pytest.mark.parametrize("call, arg, message", [
    ("encode", torch.rand(2, 1, 32, 32), "shape"),
    ("encode", torch.rand(2, 3, 64, 64), "shape"),
    ("encode", torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "floating"),
    ("decode", torch.zeros(2, 255, dtype=torch.int64), "shape"),
    ("decode", torch.zeros(2, 16, 16, dtype=torch.int64), "shape"),
    ("decode", torch.zeros(2, 256), "int64"),
    ("decode", torch.full((1, 256), 64), "lie in"),
    ("decode", torch.full((1, 256), -1), "lie in"),
])
def test_bad_input_is_refused_in_one_line(golden: dict[str, torch.Tensor], call: str, arg: torch.Tensor,
                                          message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        getattr(tiny(golden), call)(arg)
    assert "\n" not in str(err.value)


def test_image_size_must_fit_the_downsampling() -> None:
    with pytest.raises(ValueError, match="multiple of 2"):
        TamingVQGAN(TamingVQGANConfig.tiny(), image_size=33)
