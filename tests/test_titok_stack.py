"""The TiTok stacks: random-weights mode, the key listings as our modules, files in both upstream
layouts (raw state dicts of ``fun-research/TiTok``, ``PyTorchModelHubMixin`` folders of
``yucornetto/*_imagenet``) through `migbench import` into a stack, the methods on 1-D tokens, and
(marked ``gpu`` and ``weights``) a batch from the real files at the released settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from migbench.backbones.titok import CHECKPOINTS, titok_tiny
from migbench.backbones.titok.image_bert import ImageBert, ImageBertConfig
from migbench.backbones.titok.tokenizer import TiTokTokenizer, TiTokTokenizerConfig
from migbench.backbones.titok.uvit_bert import UViTBert, UViTBertConfig
from safetensors.torch import save_file

from migbench import checkpoints, registry
from migbench.cli import main
from migbench.generate import generate
from migbench.recipe import expand_preset, resolve
from migbench.weights import sha256_file

MODULES = {
    "titok_l32_tokenizer": lambda: TiTokTokenizer(TiTokTokenizerConfig.l32()),
    "titok_b64_tokenizer": lambda: TiTokTokenizer(TiTokTokenizerConfig.b64()),
    "titok_s128_tokenizer": lambda: TiTokTokenizer(TiTokTokenizerConfig.s128()),
    "titok_l32_generator": lambda: ImageBert(ImageBertConfig.l32()),
    "titok_b64_generator": lambda: ImageBert(ImageBertConfig.b64()),
    "titok_s128_generator": lambda: UViTBert(UViTBertConfig.s128()),
}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MIGBENCH_CHECKPOINTS", str(tmp_path / "checkpoints"))
    return tmp_path / "checkpoints"


def test_without_files_the_stack_names_both_routes(cache: Path) -> None:
    with pytest.raises(checkpoints.CheckpointError, match=r"checkpoint titok_b64_generator is not imported: "
                                                          r"`migbench fetch titok_b64_generator`, or download it"):
        registry.stack("titok_b64")


def test_the_key_listings_are_the_modules() -> None:
    assert sorted(MODULES) == sorted(spec.name for spec in CHECKPOINTS)
    for spec in CHECKPOINTS:
        with torch.device("meta"):
            state = MODULES[spec.name]().state_dict()
        keys, parameters = checkpoints.expected_keys(spec)
        assert {k: tuple(v.shape) for k, v in state.items()} == keys, spec.name
        assert sum(v.numel() for v in state.values()) == parameters, spec.name
        assert spec.source.startswith("hf:fun-research/TiTok/") and spec.hub_config


@pytest.mark.parametrize(("name", "tokens", "kind"), [("titok_l32", 32, "titok_image_bert"),
                                                      ("titok_b64", 64, "titok_image_bert"),
                                                      ("titok_s128", 128, "titok_uvit_bert")])
def test_random_weights_are_recorded_as_such(name: str, tokens: int, kind: str) -> None:
    with torch.device("meta"):
        stack = registry.stack(name, random_weights=True)
    assert stack.weight_hashes == {f"{name}_generator": "random-seed0", f"{name}_tokenizer": "random-seed0"}
    assert stack.tokenizer.token_shape == (tokens,) and stack.tokenizer.image_shape == (3, 256, 256)
    assert stack.backbone.seq_len == tokens and stack.backbone.describe()["kind"] == kind
    assert "grid2d" not in stack.capabilities and stack.backbone.layout.codebook_size == 4096


def test_the_presets_sample_the_tiny_stack_and_halton_is_refused() -> None:
    """B-64's released setting on the tiny 1-D stack (16 tokens): 15 passes; S-128's with T = 16
    (every step reveals a token): 32; KA-MIG with all three graphs runs; Halton is refused in one
    line before sampling."""
    stack = titok_tiny()
    b64 = generate(stack, resolve("maskgit", expand_preset("titok_b64", {})), 4, 0, batch_size=4, precision="fp32")
    assert b64.nfe_per_image["total"] == 15.0 and b64.images.shape == (4, 32, 32, 3)
    s128 = generate(stack, resolve("maskgit", expand_preset("titok_s128", {"maskgit.steps": 16})), 2, 0,
                    batch_size=2, precision="fp32")
    assert s128.nfe_per_image["total"] == 32.0
    with pytest.raises(ValueError, match=r"^method halton needs image tokens on a 2-D grid .*stack titok_tiny has "
                                         r"token_shape \(16,\)$"):
        generate(stack, resolve("halton"), 2, 0, batch_size=2)


def _upstream_files(tmp_path: Path) -> tuple[Path, Path, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Full-size random S-128 modules saved as upstream saves them: the generator as a raw
    state dict (an older transformers' ``position_ids`` buffer would be dropped; UViTBert has none),
    the tokenizer as a ``PyTorchModelHubMixin`` folder with its config.json."""
    torch.manual_seed(1)
    tokenizer, generator = TiTokTokenizer(TiTokTokenizerConfig.s128()), UViTBert(UViTBertConfig.s128())
    generator_file = tmp_path / "generator_titok_s128.bin"
    torch.save(generator.state_dict(), generator_file)
    folder = tmp_path / "tokenizer_titok_s128_imagenet"
    folder.mkdir()
    save_file(tokenizer.state_dict(), str(folder / "model.safetensors"))
    config = {"model": {"vq_model": {"vit_enc_model_size": "small", "vit_dec_model_size": "small",
                                     "num_latent_tokens": 128, "codebook_size": 4096, "token_size": 12}}}
    (folder / "config.json").write_text(json.dumps(config))
    return generator_file, folder, generator.state_dict(), tokenizer.state_dict()


@pytest.mark.slow
def test_upstream_layout_files_import_and_sample(tmp_path: Path, cache: Path) -> None:
    generator_file, folder, generator_state, tokenizer_state = _upstream_files(tmp_path)
    assert main(["import", "titok_s128_generator", str(generator_file)]) == 0
    assert main(["import", "titok_s128_tokenizer", str(folder)]) == 0
    assert checkpoints.record("titok_s128_tokenizer")["layout"] == "PyTorchModelHubMixin"
    stack = registry.stack("titok_s128")
    assert stack.weight_hashes["titok_s128_generator"] == sha256_file(generator_file)
    assert stack.weight_hashes["titok_s128_tokenizer"] == sha256_file(folder / "model.safetensors")
    for ours, saved in zip(stack.backbone.state_dict().values(), generator_state.values(), strict=True):
        assert torch.equal(ours, saved)
    for ours, saved in zip(stack.tokenizer.state_dict().values(), tokenizer_state.values(), strict=True):
        assert torch.equal(ours, saved)
    recipe = resolve("maskgit", expand_preset("titok_s128", {"maskgit.steps": 4}))
    result = generate(stack, recipe, 2, 0, batch_size=2, precision="fp32")
    assert result.images.shape == (2, 256, 256, 3) and result.nfe_per_image["total"] == 8.0


@pytest.mark.gpu
@pytest.mark.weights
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.skipif(not all(checkpoints.is_imported(f"titok_b64_{part}") for part in ("tokenizer", "generator")),
                    reason="needs titok_b64_tokenizer and titok_b64_generator imported (`migbench fetch ...`)")
def test_real_files_sample_a_batch() -> None:
    """A batch of 8 at B-64's released setting: images that are not flat noise."""
    stack = registry.stack("titok_b64")
    result = generate(stack, resolve("maskgit", expand_preset("titok_b64", {})), 8, 0, batch_size=8, device="cuda")
    assert result.images.shape == (8, 256, 256, 3) and result.images.std() > 20
    assert result.nfe_per_image["total"] == 15.0
