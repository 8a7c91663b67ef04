"""Training resumes to exactly the weights of an uninterrupted run; weights are hash-checked."""

import json

import pytest
import torch
from migbench.backbones.fmnist.transformer import MaskedTransformer, TransformerConfig

from migbench import weights
from migbench.masking import masked_loss, sample_mask
from migbench.training import TrainLoop, batch_indices, warmup_cosine

TINY = TransformerConfig(codebook_size=16, width=32, depth=2, heads=2)
DATA = torch.randint(0, 16, (64, 64), generator=torch.Generator().manual_seed(0))
LABELS = torch.arange(64) % 10


def run(run_dir, stop_after=None, name="tiny"):
    torch.manual_seed(0)
    model = MaskedTransformer(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step_fn(net, step, gen, device):
        idx = batch_indices(len(DATA), 16, 0, step)
        mask = sample_mask(16, 64, "cosine", 0.0, gen)
        loss, acc = masked_loss(net, DATA[idx].to(device), LABELS[idx].to(device), mask.to(device), 0.1)
        return loss, {"acc": float(acc)}

    loop = TrainLoop(name=name, total_steps=6, seed=0, run_dir=run_dir, stop_after=stop_after,
                     lr_at=lambda s: warmup_cosine(s, 6, 2, 1e-3))
    return loop.run(model, optimizer, step_fn), loop


def test_resume_matches_uninterrupted(tmp_path) -> None:
    straight, _ = run(tmp_path / "a")
    partial, loop = run(tmp_path / "b", stop_after=3)
    assert not loop.finished()
    resumed, loop = run(tmp_path / "b")
    assert loop.finished()
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=False):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    logged = [json.loads(line)["step"] for line in (tmp_path / "b" / "train.log").read_text().splitlines()]
    assert logged[0] == 0 and logged[-1] == 5


def test_resume_refuses_another_runs_checkpoint(tmp_path) -> None:
    run(tmp_path, stop_after=2)
    with pytest.raises(ValueError, match="belongs to 'tiny', not 'other'.*--run-dir"):
        run(tmp_path, name="other")


def test_resume_refuses_another_precision(tmp_path) -> None:
    _, loop = run(tmp_path, stop_after=2)
    state = torch.load(loop.checkpoint_path, weights_only=False)
    assert state["precision"] == loop.precision_used
    torch.save({**state, "precision": "fp16"}, loop.checkpoint_path)  # as if started on a GPU in fp16
    with pytest.raises(ValueError, match="was trained in fp16.*--precision fp16"):
        run(tmp_path)


def test_batch_indices_are_epoch_permutations() -> None:
    seen = torch.cat([batch_indices(10, 5, 0, s) for s in range(2)])
    assert sorted(seen.tolist()) == list(range(10))
    assert torch.equal(batch_indices(10, 5, 0, 3), batch_indices(10, 5, 0, 3))
    with pytest.raises(ValueError):
        batch_indices(4, 5, 0, 0)


def test_warmup_cosine() -> None:
    assert warmup_cosine(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert warmup_cosine(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert warmup_cosine(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


def test_weights_roundtrip_and_sha_mismatch(tmp_path) -> None:
    state = {"w": torch.arange(6.0).reshape(2, 3), "i": torch.tensor([1, 2])}
    weights.save_weights("thing", state, folder=tmp_path)
    entry = weights.record("thing", command="test", wall_seconds=1.0, metrics={"m": 1.0},
                           config={}, folder=tmp_path)
    loaded, meta = weights.load_weights("thing", folder=tmp_path)
    assert loaded["w"].dtype == torch.float32 and torch.equal(loaded["w"], state["w"])
    assert meta["sha256"] == entry["sha256"] and meta["command"] == "test"
    path = tmp_path / "thing.safetensors"
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(weights.WeightsError, match="sha256"):
        weights.load_weights("thing", folder=tmp_path)
    with pytest.raises(weights.WeightsError, match="no weights named 'other'"):
        weights.load_weights("other", folder=tmp_path)


def test_loss_weights_scale_per_sample() -> None:
    torch.manual_seed(0)
    model = MaskedTransformer(TINY)
    mask = sample_mask(4, 64, "cosine", 0.0, torch.Generator().manual_seed(1))
    plain, _ = masked_loss(model, DATA[:4], LABELS[:4], mask, 0.0)
    unit, _ = masked_loss(model, DATA[:4], LABELS[:4], mask, 0.0, torch.ones(4))
    double, _ = masked_loss(model, DATA[:4], LABELS[:4], mask, 0.0, torch.full((4,), 2.0))
    torch.testing.assert_close(plain, unit)
    torch.testing.assert_close(double, 2 * plain)


def test_emigm_preset_and_bad_trainings() -> None:
    from migbench.backbones.fmnist.train_backbone import BackboneTraining

    emigm = BackboneTraining.preset("emigm")
    assert (emigm.mask_schedule, emigm.t_min, emigm.null_is_mask, emigm.loss_weight) == ("exp", 0.2, True, "unit")
    with pytest.raises(ValueError, match="loss_weight"):
        BackboneTraining(loss_weight="half")
    with pytest.raises(ValueError, match="unknown backbone training preset"):
        BackboneTraining.preset("mar")


def test_train_tokenizer_publishes_a_checked_entry(tmp_path, monkeypatch) -> None:
    from migbench.backbones.fmnist.train_tokenizer import TokenizerTraining, train_tokenizer
    from migbench.backbones.fmnist.vq_tokenizer import VQConfig

    monkeypatch.setenv("MIGBENCH_WEIGHTS", str(tmp_path / "w"))
    config = VQConfig(codebook_size=16, code_dim=4, channels=(8, 8, 8))
    training = TokenizerTraining(steps=2, batch_size=8, warmup=1)
    tokenizer = train_tokenizer(tmp_path / "run", name="tiny_vq", training=training, config=config, command="test")
    state, entry = weights.load_weights("tiny_vq")
    assert entry["command"] == "test" and entry["config"]["training"]["steps"] == 2
    assert set(entry["metrics"]) == {"test_psnr_db", "codebook_usage"}
    for key, value in tokenizer.state_dict().items():
        torch.testing.assert_close(value.float(), state[key])
