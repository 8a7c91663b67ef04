"""The released self-guidance adapter through our method, and upstream's sampler/fine-tuning options.

Fixtures, made outside the repository from JiwanHur/UnlockMGM @ 33e139a5aeae8a061d1d7eb7f85b370e293910a9
(``muse/modeling_transformer_toast.py`` ``MaskGitTransformerTOAST``, imported under the package
name ``muse`` without running ``muse/__init__.py``; torch 2.14.1, CPU, float32):

- ``backbones/openmuse/keys/toast_adapter.json``: the model as ``configs/ft_256_toast_cls_b256_corr.yaml``
  builds it (vocab 2025, 257 positions, 768 wide, 24 layers, 16 heads, MLP 3072, codebook 1024,
  1000 classes, LayerNorm eps 1e-12, ``use_maskgit_mlp``, ``use_bias``, ``use_toast``,
  ``use_blank_second``, ``tg_factor`` 16) on the meta device; the names and shapes of its
  ``state_dict()`` under ``cls_anchor_gen.``, ``top_down_transform`` and ``decoders.``
  (56 keys, 41,793,808 parameters); the other 394 keys are the backbone's.
- ``tests/fixtures/openmuse_self_guidance_tiny.safetensors``: the same model at width 32, 2 layers
  of 2 heads, MLP 64, 16 image tokens (17 positions), codebook 1024 (``TokenGenerator`` subtracts
  a hard-coded 1024 from the class id), 10 classes (vocab 1035, mask 1034), ``tg_factor`` 4,
  seed 19; every parameter then overwritten (torch.manual_seed(19) state continuing): LayerNorm
  gains 1 + 0.2 N(0,1), ``top_down_transform`` I + 0.2 N(0,1), ``decoders`` N(0,1)/sqrt(32), the
  rest 0.3 N(0,1), and ``mlm_layer.to_logits.weight`` := ``embed.word_embeddings.weight`` (as
  the converter fills it); eval mode. Rows 0-1: ``generate_sg(class_ids=[3, 7], timesteps=18,
  guidance_scale=1, temperature=25)`` run itself, its first step's two passes recorded by
  wrapping ``forward`` (``force_no_toast=True, return_hidden_states=True``) and
  ``forward_with_hidden_toast``; the softmax that its ``torch.multinomial`` received was checked
  to equal softmax(l_aux + 2 (l - l_aux)) (1e-6). Rows 2-3: a canvas of random codes (generator
  seed 3) with about half the positions masked, classes [0, 9], through the same two calls.
  Stored: ``inputs.ids`` (4, 16) (image ids, mask 1034), ``inputs.labels`` (4,),
  ``outputs.main`` and ``outputs.aux`` (4, 16, 1024) (upstream's ``[:, 1:, :1024]``), and the
  whole ``state.*`` (54 keys).
"""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from migbench.backbones.openmuse.maskgit_transformer import (
    MaskGitTransformer,
    MaskGitTransformerConfig,
)
from migbench.methods.maskgit import (
    DECODED_LOG_CONFIDENCE,
    MaskGITConfig,
    keep_decoded,
    remask_decoded,
)
from migbench.methods.self_guidance import SelfGuidanceTraining
from migbench.methods.self_guidance.adapter import (
    AuxiliaryPass,
    TOASTAdapter,
    auxiliary_logits,
    renamed_state,
)
from migbench.methods.self_guidance.release import (
    ADAPTER_KEYS,
    BACKBONE_KEYS,
    CHECKPOINTS,
    RELEASED,
    release_adapter,
)
from migbench.methods.self_guidance.train import substitute_log_probs
from safetensors.torch import load_file

from migbench.checkpoints import CheckpointError, extract_state
from migbench.config import describe_config
from migbench.paths import repo_root
from migbench.schedules import masked_after_steps

ROOT = repo_root()
LISTING = ROOT / "backbones" / "openmuse" / "keys" / "toast_adapter.json"
FIXTURE = ROOT / "tests" / "fixtures" / "openmuse_self_guidance_tiny.safetensors"
ADAPTER_PREFIXES = ("cls_anchor_gen.", "top_down_transform", "decoders.")


def fixture() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(inputs and outputs, upstream state dict) of the tiny golden."""
    data = load_file(str(FIXTURE))
    return ({k: v for k, v in data.items() if not k.startswith("state.")},
            {k.removeprefix("state."): v for k, v in data.items() if k.startswith("state.")})


def test_adapter_keys_are_upstreams_at_full_size() -> None:
    listing = json.loads(Path(LISTING).read_text())
    with torch.device("meta"):
        adapter = TOASTAdapter(1000, 768, 24, 16, null_class=False, signal_bias=True)
    assert {k: list(v.shape) for k, v in adapter.state_dict().items()} == listing["keys"]
    assert sum(p.numel() for p in adapter.parameters()) == listing["parameters"] == 41_793_808


def test_checkpoint_specs_split_the_ema_file() -> None:
    """Each released file is imported as its adapter part and its backbone part; the adapter
    spec's ``ignore`` drops exactly the backbone's keys of the whole-model EMA state dict."""
    assert {s.name for s in CHECKPOINTS} == {*RELEASED, "unlockmgm_maskgit_256", "unlockmgm_maskgit_512"}
    _, state = fixture()
    adapter_spec = next(s for s in CHECKPOINTS if s.name == RELEASED[0])
    backbone_spec = next(s for s in CHECKPOINTS if s.name == "unlockmgm_maskgit_256")
    assert adapter_spec.ignore == BACKBONE_KEYS and backbone_spec.ignore == ADAPTER_KEYS
    part = extract_state(adapter_spec, state)
    assert sorted(part) == sorted(TOASTAdapter(10, 32, 2, 4, null_class=False).state_dict())
    assert not set(part) & set(extract_state(backbone_spec, state))
    assert len(part) + len(extract_state(backbone_spec, state)) == len(state)


def test_release_adapter_loads_strictly_and_refuses_null() -> None:
    _, state = fixture()
    part = {k: v for k, v in state.items() if k.startswith(ADAPTER_PREFIXES)}
    adapter = release_adapter(part, num_classes=10, width=32, depth=2)
    assert adapter.signal_bias and adapter.cls_anchor_gen.factor == 4
    assert adapter.cls_anchor_gen.layer_norm.eps == 1e-5 and adapter.cls_anchor_gen.layer_norm.bias is not None
    with pytest.raises(ValueError, match="no null-class anchor"):
        adapter.cls_anchor_gen(torch.tensor([-1]))
    with pytest.raises(CheckpointError, match="does not fit"):
        release_adapter({**part, "extra": torch.zeros(1)}, 10, 32, 2)


def test_anchor_factor_is_the_last_axis() -> None:
    """a = mlp_t(LN(sum_f mlp_f[f] (mlp_p[0] + mlp_c[c]).view(d, F)[:, f])), written out."""
    torch.manual_seed(0)
    adapter = TOASTAdapter(5, 8, 1, factor=3, null_class=False)
    gen = adapter.cls_anchor_gen
    rows = (gen.mlp_p.weight[0] + gen.mlp_c.weight[2]).view(8, 3)
    expected = gen.mlp_t(gen.layer_norm(sum(gen.mlp_f.weight[0, f] * rows[:, f] for f in range(3))))
    torch.testing.assert_close(gen(torch.tensor([2]))[0, 0], expected)


def test_old_adapter_names_load_through_the_rename_hook() -> None:
    """An adapter saved before upstream's names (the committed fmnist one) loads bit for bit."""
    torch.manual_seed(0)
    adapter = TOASTAdapter(10, 16, 3, factor=4)
    old = {}
    for key, value in adapter.state_dict().items():
        key = (key.replace("cls_anchor_gen.mlp_p.weight", "anchor.position")
               .replace("cls_anchor_gen.mlp_c.weight", "anchor.classes.weight")
               .replace("cls_anchor_gen.mlp_f.weight", "anchor.factors")
               .replace("cls_anchor_gen.layer_norm.", "anchor.norm.").replace("cls_anchor_gen.mlp_t.", "anchor.proj.")
               .replace(".linear.", ".first.").replace(".linear2.", ".second."))
        old[key] = value[0] if key == "anchor.factors" else value
    assert "anchor.factors" in old and old["anchor.factors"].shape == (4,) and "decoders.0.first.weight" in old
    fresh = TOASTAdapter(10, 16, 3, factor=4)
    fresh.load_state_dict(old)
    for key, value in adapter.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    renamed = dict(old)
    renamed_state(renamed)
    assert set(renamed) == set(adapter.state_dict())


def test_signal_bias_counts_the_value_bias_twice() -> None:
    """Upstream: value = value(x) + value(td) = W x + b + W td + b; ours without it: + W td."""
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(6, 6, generator=gen), torch.randn(6, generator=gen)
    x, td = torch.randn(2, 5, 6, generator=gen), torch.randn(2, 5, 6, generator=gen)
    ctx = SimpleNamespace(backbone=SimpleNamespace(value_projection=lambda index: (w, b)))
    v = x @ w.T + b
    for bias, expected in ((True, v + td @ w.T + b), (False, v + td @ w.T)):
        aux = AuxiliaryPass(1, signal_bias=bias)
        aux.signals = [td]
        torch.testing.assert_close(aux._value_hook(0)(v, ctx), expected)


def test_generate_sg_first_step_matches_upstream() -> None:
    """Our Google-layout backbone + our self-guidance with the converted adapter reproduce
    ``generate_sg``'s two passes (main l and auxiliary l_aux), so l_aux + (1 + s)(l - l_aux)."""
    data, state = fixture()
    config = MaskGitTransformerConfig(img_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, codebook_size=1024, num_classes=10)
    backbone = MaskGitTransformer(config).eval()
    spec = next(s for s in CHECKPOINTS if s.name == RELEASED[0])
    backbone.load_state_dict({k: v for k, v in state.items() if not k.startswith(ADAPTER_PREFIXES)})
    adapter = release_adapter(extract_state(spec, state), 10, 32, 2)
    ids, labels = data["inputs.ids"], data["inputs.labels"]
    with torch.no_grad():
        main = backbone(ids, labels)
        aux = AuxiliaryPass(backbone.depth, signal_bias=adapter.signal_bias)
        aux_logits = auxiliary_logits(backbone, adapter, aux, aux.hooks(), labels, main.last_block)
    torch.testing.assert_close(main.logits, data["outputs.main"], rtol=0, atol=1e-4)
    torch.testing.assert_close(aux_logits, data["outputs.aux"], rtol=0, atol=1e-4)
    once = AuxiliaryPass(backbone.depth)  # the bias counted once: not upstream's
    with torch.no_grad():
        other = auxiliary_logits(backbone, adapter, once, once.hooks(), labels, main.last_block)
    assert (other - data["outputs.aux"]).abs().max() > 0.1


# --- upstream options of the base sampler and the fine-tuning ----------------------------------


def test_new_knobs_stay_out_of_descriptions_at_their_defaults() -> None:
    described = describe_config(MaskGITConfig())
    assert "count_precision" not in described and "decoded_confidence" not in described
    assert "count_precision" in describe_config(MaskGITConfig(count_precision="float32"))
    training = describe_config(SelfGuidanceTraining())
    assert "substitutes" not in training and "signal_bias" not in training


def test_float32_counts_mask_one_fewer_at_two_thirds() -> None:
    """F4: T=18, N=256, step 11 (r = 2/3, cos = 1/2): upstream's float32 masks 127, float64 128."""
    exact, f32 = masked_after_steps("cosine", 18, 256), masked_after_steps("cosine", 18, 256, "float32")
    assert (exact[11], f32[11]) == (128, 127)
    assert [k for k in range(18) if exact[k] != f32[k]] == [11]
    assert masked_after_steps("cosine", 8, 256, "float32") == masked_after_steps("cosine", 8, 256)
    with pytest.raises(ValueError, match="count_precision=float32 takes"):
        MaskGITConfig(count_precision="float32", schedule="exp")


def test_google_schedules_under_googles_definitions() -> None:
    """F3: Google's exp/log (mask_schedule.py) beside eMIGM's, T=8, N=256."""
    assert masked_after_steps("google-exp", 8, 256) == [254, 252, 248, 240, 224, 192, 128, 0]
    assert masked_after_steps("google-log", 8, 256) == [96, 64, 45, 32, 21, 13, 6, 0]
    assert masked_after_steps("exp", 8, 256) == [252, 249, 244, 234, 216, 182, 118, 0]
    assert masked_after_steps("log", 8, 256) == [249, 241, 232, 220, 206, 186, 151, 0]
    assert masked_after_steps("google-pow2", 4, 100) == [93, 75, 43, 0]   # floor(100 (1 - r^2))
    for name in ("google-exp", "google-log", "google-pow2"):
        assert masked_after_steps(name, 8, 256, "float32") == masked_after_steps(name, 8, 256)


def _state(masked: torch.Tensor, after: int) -> SimpleNamespace:
    return SimpleNamespace(masked=masked, info=SimpleNamespace(masked_after=after),
                           backbone=SimpleNamespace(layout=SimpleNamespace(mask_id=99)))


def test_finite_decoded_confidence_can_remask() -> None:
    """F5: a decoded token scores 88.72 + tau g; with g low enough it is masked again, where
    Google's +inf keeps it."""
    assert DECODED_LOG_CONFIDENCE == math.log(torch.finfo(torch.float32).max) == pytest.approx(88.7228, abs=1e-4)
    candidates = torch.tensor([[1, 2, 3, 4]])
    masked = torch.tensor([[True, True, False, False]])  # positions 2, 3 decoded
    scores = torch.tensor([[-1.0, -2.0, -100.0, 5.0]])   # position 2: 0 + tau g = -100
    assert remask_decoded(candidates, scores, _state(masked, 2)).tolist() == [[1, 99, 99, 4]]
    assert keep_decoded(candidates, scores, _state(masked, 2)).tolist() == [[99, 99, 3, 4]]
    mild = torch.tensor([[-1.0, -2.0, -80.0, 5.0]])      # 88.72 - 80 > -1: kept
    assert remask_decoded(candidates, mild, _state(masked, 2)).tolist() == [[99, 99, 3, 4]]


def test_finite_confidence_samples_run() -> None:
    from migbench.backbones.toy import toy

    from migbench.generate import generate
    from migbench.recipe import resolve

    recipe = resolve("maskgit", {"maskgit.decoded_confidence": "finite", "maskgit.choice_temperature": 200.0,
                                 "maskgit.count_precision": "float32", "maskgit.steps": 6})
    out = generate(toy(), recipe, 4, 0, batch_size=4, progress=False)
    assert out.nfe_per_image["backbone"] == 6


def test_upstream_substitutes_are_nearly_uniform() -> None:
    """F6: multinomial(softmax(p)) over probabilities p: every code within a factor e of uniform."""
    logits = torch.randn(2, 5, 64) * 10
    model = substitute_log_probs(logits, "model")
    torch.testing.assert_close(model, torch.log_softmax(logits, -1))
    upstream = substitute_log_probs(logits, "upstream").exp()
    assert float(upstream.max() / upstream.min()) <= math.e + 1e-4
    with pytest.raises(ValueError, match="substitution rule"):
        substitute_log_probs(logits, "uniform")
