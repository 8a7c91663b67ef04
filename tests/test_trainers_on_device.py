"""Every trainer trains on whatever device is present, and a CPU run's numbers did not move.

A tiny world stands in for Fashion-MNIST: the toy stack's tokenizer and backbone are saved as
weights in a temporary folder, and token maps and images are small random tensors. On CUDA the
trained model must sit on the GPU; on the CPU the first losses must equal, bit for bit, those
recorded before the trainers learnt about devices (same draws, same precision).
"""

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from migbench.backbones.fmnist import train_backbone as tb
from migbench.backbones.fmnist import train_tokenizer as tt
from migbench.backbones.fmnist.loading import load_transformer
from migbench.backbones.fmnist.transformer import TransformerConfig
from migbench.backbones.fmnist.vq_tokenizer import VQConfig
from migbench.backbones.toy import toy
from migbench.benchmarks import train_classifier as tc
from migbench.benchmarks.metrics.loading import CLASSIFIER
from migbench.methods.ka_mig import train as km
from migbench.methods.self_guidance import SelfGuidanceTraining
from migbench.methods.self_guidance import train as sg
from migbench.methods.token_critic import TokenCriticTraining
from migbench.methods.token_critic import train as tcr

from migbench import training, weights
from migbench.api import Stack
from migbench.cli import main
from migbench.precision import resolve

K = 16  # the toy stack's codebook
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RUN = training.TrainLoop.run  # the real loop, which _train wraps

# The first two training losses of each trainer in the tiny world on the CPU, recorded before the
# device change (git d27d994); later steps depend on the step count through the learning rate.
# The classifier then always trained in fp32, so it has no bf16 record. KA-MIG's were re-recorded
# when its trainer took a stack (issue 16): it trains on the toy stack itself, not on a saved fp16
# copy loaded twice (whose construction drew from the global RNG before the module's init); with
# that copy and those draws it still gave the old numbers bit for bit.
RECORDED_ON = "torch 2.14.1+cu130, AVX512, native bf16 False"  # conftest.machine_key() where they were recorded
RECORDED_CPU_LOSSES = {
    "bf16": {"tokenizer": [0.544508695602417, 0.48101526498794556],
             "backbone_maskgit": [2.7786548137664795, 2.7779510021209717],
             "backbone_emigm": [3.175515651702881, 1.4060454368591309],
             "token_critic": [0.6953321695327759, 0.6867416501045227],
             "self_guidance": [2.7555253505706787, 2.7725613117218018],
             "ka_mig": [2.7766144275665283, 2.771636962890625]},
    "fp32": {"tokenizer": [0.5459678769111633, 0.48129069805145264],
             "backbone_maskgit": [2.7786941528320312, 2.777888774871826],
             "backbone_emigm": [3.175485610961914, 1.4060415029525757],
             "classifier": [2.4842069149017334, 3.595229387283325],
             "token_critic": [0.6953520774841309, 0.6867699027061462],
             "self_guidance": [2.755542039871216, 2.772549867630005],
             "ka_mig": [2.7766056060791016, 2.771632671356201]},
}


def _maps(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, K, (count, 64), generator=torch.Generator().manual_seed(seed))
    return ids, torch.arange(count) % 10


class _Split:
    """A stand-in for a Fashion-MNIST split: ``count`` random images in [0, 1]."""

    def __init__(self, count: int, seed: int) -> None:
        self.images = torch.rand(count, 1, 32, 32, generator=torch.Generator().manual_seed(seed))
        self.labels = torch.arange(count) % 10

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images, self.labels


TRAIN_MAPS, TEST_MAPS = _maps(48, 1), _maps(32, 2)


def _token_maps(split: str, tokenizer_name: str = "fmnist_vq", data_dir: str | None = None,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    return TRAIN_MAPS if split == "train" else TEST_MAPS


def _load_split(split: str, data_dir: str | None = None) -> _Split:
    return _Split(48, 3) if split == "train" else _Split(32, 4)


@pytest.fixture
def tiny_world(tmp_path, monkeypatch) -> Path:
    """Weights folder with the toy tokenizer (as ``fmnist_vq``) and backbone (``toy_backbone``);
    small random token maps and images. Returns the folder for run directories."""
    monkeypatch.setenv("MIGBENCH_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("MIGBENCH_CACHE", str(tmp_path / "cache"))
    for module in (tb,):
        monkeypatch.setattr(module, "token_maps", _token_maps)
    for module in (tt, tc):
        monkeypatch.setattr(module, "load_split", _load_split)
    stack = toy()
    for name, model in (("fmnist_vq", stack.tokenizer), ("toy_backbone", stack.backbone)):
        weights.save_weights(name, model.state_dict())
        weights.record(name, command="test", wall_seconds=0.0, metrics={}, config={"model": model.describe()})
    return tmp_path / "runs"


def _tiny_stack() -> Stack:
    """The toy stack as a method's trainer sees it: backbone ``toy_backbone`` loaded from the
    weights folder, the small random token maps as its data."""
    toy_stack = toy()
    data = replace(toy_stack.dataset, token_maps=lambda split, device: _token_maps(split))
    return Stack(name="tiny", tokenizer=toy_stack.tokenizer, backbone=load_transformer("toy_backbone"),
                 dataset=data)


def _toy_with_maps() -> Stack:
    """The toy stack with the tiny world's token maps as its data."""
    stack = toy()
    return replace(stack, dataset=replace(stack.dataset, token_maps=lambda split, device="cpu": _token_maps(split)))


def _tiny_transformer(null_is_mask: bool = False) -> TransformerConfig:
    return TransformerConfig(codebook_size=K, width=32, depth=2, heads=2, null_is_mask=null_is_mask)


# name -> (weights it publishes, trainer(run_dir, steps, stop_after, precision)), all at batch 8
TRAINERS: dict[str, tuple[str, Callable[..., torch.nn.Module]]] = {
    "tokenizer": ("tiny_vq", lambda d, steps, stop, p: tt.train_tokenizer(
        d, name="tiny_vq", training=tt.TokenizerTraining(steps=steps, batch_size=8, warmup=1),
        config=VQConfig(codebook_size=K, code_dim=4, channels=(8, 8, 8)), command="test",
        stop_after=stop, precision=p)),
    "backbone_maskgit": ("tiny_maskgit", lambda d, steps, stop, p: tb.train_backbone(
        d, replace(tb.BackboneTraining.preset("maskgit"), name="tiny_maskgit", steps=steps, batch_size=8, warmup=1),
        config=_tiny_transformer(), command="test", stop_after=stop, precision=p)),
    "backbone_emigm": ("tiny_emigm", lambda d, steps, stop, p: tb.train_backbone(
        d, replace(tb.BackboneTraining.preset("emigm"), name="tiny_emigm", steps=steps, batch_size=8, warmup=1,
                   loss_weight="elbo"),
        config=_tiny_transformer(null_is_mask=True), command="test", stop_after=stop, precision=p)),
    "classifier": (CLASSIFIER, lambda d, steps, stop, p: tc.train_classifier(
        d, tc.ClassifierTraining(steps=steps, batch_size=8, warmup=1), command="test", stop_after=stop,
        precision=p)),
    "token_critic": ("tiny_token_critic", lambda d, steps, stop, p: tcr.train_critic(
        d, _tiny_stack(), TokenCriticTraining(steps=steps, batch_size=8, warmup=1),
        command="test", stop_after=stop, precision=p)),
    "self_guidance": ("tiny_self_guidance", lambda d, steps, stop, p: sg.train_adapter(
        d, _tiny_stack(), SelfGuidanceTraining(steps=steps, batch_size=8, warmup=1, factor=4),
        command="test", stop_after=stop, precision=p)),
    "ka_mig": ("tiny_ka_mig", lambda d, steps, stop, p: km.train_ka_mig(
        d, _toy_with_maps(), km.KAMIGTraining(name="tiny_ka_mig", graphs="tiny_graphs", steps=steps, batch_size=8,
                                              warmup=1),
        command="test", stop_after=stop, precision=p)),
}


def _train(monkeypatch, name: str, run_dir: Path, steps: int, stop_after: int | None,
           precision: str) -> tuple[torch.nn.Module, list[tuple[float, torch.device, torch.device]]]:
    """Run trainer ``name``; returns its model and (loss, parameters' device, device given) per step."""
    seen: list[tuple[float, torch.device, torch.device]] = []

    def recording_run(loop: training.TrainLoop, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      step_fn: training.StepFn, extra_state: Callable[[], dict] | None = None) -> torch.nn.Module:
        def step(net: torch.nn.Module, index: int, gen: torch.Generator, device: torch.device
                 ) -> tuple[torch.Tensor, dict[str, float]]:
            loss, metrics = step_fn(net, index, gen, device)
            seen.append((loss.item(), next(net.parameters()).device, device))
            return loss, metrics
        return RUN(loop, model, optimizer, step, extra_state)

    monkeypatch.setattr(training.TrainLoop, "run", recording_run)
    torch.manual_seed(0)  # the models' initial weights
    return TRAINERS[name][1](run_dir, steps, stop_after, precision), seen


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_one_step_of_every_trainer_on_the_device(tiny_world, monkeypatch, name) -> None:
    model, seen = _train(monkeypatch, name, tiny_world / name, steps=1, stop_after=None, precision="auto")
    [(loss, param_device, given)] = seen
    assert param_device.type == DEVICE.type and given.type == DEVICE.type
    assert torch.isfinite(torch.tensor(loss))
    assert next(model.parameters()).device.type == DEVICE.type
    entry = weights.manifest_entry(TRAINERS[name][0])
    used = "fp32" if name == "classifier" else resolve("auto", DEVICE)  # the metric network stays fp32
    assert entry["config"]["precision"] == used and entry["metrics"]


@pytest.mark.slow
@pytest.mark.parametrize(("precision", "name"), [(p, n) for p, losses in RECORDED_CPU_LOSSES.items()
                                                 for n in sorted(losses)])
def test_cpu_losses_equal_those_recorded_before_the_device_change(tiny_world, monkeypatch, precision,
                                                                   name, recorded_here) -> None:
    """Bit-exact on the machine kind that recorded them (``pytest -m slow`` there)."""
    recorded_here(RECORDED_ON)
    _, seen = _train(monkeypatch, name, tiny_world / name, steps=3, stop_after=2, precision=precision)
    assert [loss for loss, _, _ in seen] == RECORDED_CPU_LOSSES[precision][name]


def test_loops_of_different_precisions_share_a_process(tiny_world, monkeypatch) -> None:
    # accelerate keeps one process-wide state; the fp32 classifier must not block a bf16 loop
    _train(monkeypatch, "classifier", tiny_world / "c", steps=2, stop_after=1, precision="auto")
    _, seen = _train(monkeypatch, "backbone_maskgit", tiny_world / "b", steps=2, stop_after=1, precision="bf16")
    assert len(seen) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 trains on a GPU")
def test_fp16_training_on_the_cpu_is_refused(tiny_world, monkeypatch) -> None:
    with pytest.raises(ValueError, match="fp16 training needs a GPU"):
        _train(monkeypatch, "backbone_maskgit", tiny_world / "b", steps=1, stop_after=None, precision="fp16")


def test_cli_passes_precision_to_train_and_fit(monkeypatch, tmp_path) -> None:
    from migbench.methods.token_critic import TokenCriticMethod

    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(tt, "train_tokenizer", lambda run_dir, **kw: calls.append(("train", kw["precision"])))
    monkeypatch.setattr(TokenCriticMethod, "fit", staticmethod(
        lambda run_dir, command, stack, config, precision: calls.append(("fit", precision))))
    assert main(["train", "tokenizer", "--precision", "fp16", "--run-dir", str(tmp_path)]) == 0
    assert main(["fit", "token_critic", "--run-dir", str(tmp_path)]) == 0
    assert main(["fit", "token_critic", "--precision", "bf16", "--run-dir", str(tmp_path)]) == 0
    assert calls == [("train", "fp16"), ("fit", "auto"), ("fit", "bf16")]
    assert main(["fit", "token_critic", "--precision", "fp8"]) == 2  # argparse's error, one line
