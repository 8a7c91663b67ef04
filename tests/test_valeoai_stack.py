"""The valeoai stacks: random-weights mode, checkpoint files laid out like upstream's through
`migbench import` into a stack, and (marked ``gpu`` and ``weights``) a batch from the real files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from migbench.backbones.valeoai import CHECKPOINTS
from migbench.backbones.valeoai.mask_transformer import MaskTransformer, MaskTransformerConfig
from migbench.backbones.valeoai.taming_vqgan import TamingVQGAN, TamingVQGANConfig

from migbench import checkpoints, registry
from migbench.cli import main
from migbench.generate import generate
from migbench.recipe import resolve
from migbench.weights import sha256_file


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MIGBENCH_CHECKPOINTS", str(tmp_path / "checkpoints"))
    return tmp_path / "checkpoints"


def test_without_files_the_stack_names_both_routes(cache: Path) -> None:
    with pytest.raises(checkpoints.CheckpointError, match=r"checkpoint valeoai_maskgit_256 is not imported: "
                                                          r"`migbench fetch valeoai_maskgit_256`, or download it"):
        registry.stack("valeoai_maskgit_256")


def test_random_weights_are_recorded_as_such() -> None:
    with torch.device("meta"):
        stack = registry.stack("valeoai_maskgit_256", random_weights=True)
    assert stack.weight_hashes == {"valeoai_maskgit_256": "random-seed0", "valeoai_vqgan": "random-seed0"}
    assert stack.tokenizer.token_shape == (16, 16) and stack.tokenizer.image_shape == (3, 256, 256)
    with pytest.raises(ValueError, match="stack fmnist has no random-weights mode"):
        registry.stack("fmnist", random_weights=True)


def test_the_key_listings_are_the_modules(cache: Path) -> None:
    """The listings ``migbench import`` checks files against are exactly our modules' state dicts."""
    modules = {"valeoai_maskgit_256": lambda: MaskTransformer(MaskTransformerConfig(img_size=256)),
               "valeoai_maskgit_512": lambda: MaskTransformer(MaskTransformerConfig(img_size=512)),
               "valeoai_vqgan": lambda: TamingVQGAN(TamingVQGANConfig(), image_size=256)}
    for spec in CHECKPOINTS:
        with torch.device("meta"):
            state = modules[spec.name]().state_dict()
        keys, parameters = checkpoints.expected_keys(spec)
        assert {k: tuple(v.shape) for k, v in state.items()} == keys, spec.name
        assert sum(v.numel() for v in state.values()) == parameters, spec.name


@pytest.mark.slow
def test_upstream_layout_files_import_and_sample(tmp_path: Path, cache: Path) -> None:
    """Full-size random modules saved as upstream saves them (DDP prefix, training containers,
    the VQGAN's loss.* keys) go through `migbench import`, then the stack loads them strictly,
    records both sha256s of each, and samples."""
    torch.manual_seed(1)
    transformer = MaskTransformer(MaskTransformerConfig(img_size=256))
    vqgan = TamingVQGAN(TamingVQGANConfig(), image_size=256)
    vit_file, vq_file = tmp_path / "MaskGIT_ImageNet_256.pth", tmp_path / "last.ckpt"
    torch.save({"iter": 1, "global_epoch": 1, "optimizer_state_dict": {},
                "model_state_dict": {f"module.{k}": v for k, v in transformer.state_dict().items()}}, vit_file)
    torch.save({"state_dict": {**vqgan.state_dict(), "loss.discriminator.weight": torch.ones(3)}}, vq_file)
    assert main(["import", "valeoai_maskgit_256", str(vit_file)]) == 0
    assert main(["import", "valeoai_vqgan", str(vq_file)]) == 0
    stack = registry.stack("valeoai_maskgit_256")
    assert stack.weight_hashes["valeoai_maskgit_256"] == sha256_file(vit_file)
    assert set(stack.weight_hashes) == {"valeoai_maskgit_256", "valeoai_maskgit_256.safetensors",
                                        "valeoai_vqgan", "valeoai_vqgan.safetensors"}
    for ours, saved in zip(stack.backbone.state_dict().values(), transformer.state_dict().values(), strict=True):
        assert torch.equal(ours, saved)
    result = generate(stack, resolve(["maskgit"], {"maskgit.steps": 2}), 2, 0, batch_size=2, precision="fp32")
    assert result.images.shape == (2, 256, 256, 3)


@pytest.mark.gpu
@pytest.mark.weights
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.skipif(not all(checkpoints.is_imported(s.name) for s in CHECKPOINTS[::2]),
                    reason="needs valeoai_maskgit_256 and valeoai_vqgan imported (`migbench fetch ...`)")
def test_real_files_sample_a_batch() -> None:
    """A batch of 8 at the README's 256 px settings: images that are not flat noise."""
    stack = registry.stack("valeoai_maskgit_256")
    recipe = resolve(["maskgit"], {"maskgit.steps": 8, "maskgit.choice_temperature": 4.5, "maskgit.cfg_scale": 3.0})
    result = generate(stack, recipe, 8, 0, batch_size=8, device="cuda")
    assert result.images.shape == (8, 256, 256, 3) and result.images.std() > 20
