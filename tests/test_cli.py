"""The command line on the committed Fashion-MNIST stack."""

import json

import numpy as np
from PIL import Image

from migbench.cli import main


def test_sample_writes_samples_grid_and_meta(tmp_path, capsys) -> None:
    out = tmp_path / "s"
    assert main(["sample", "--n", "12", "--classes", "1,5,7", "--batch-size", "6", "--out", str(out),
                 "--set", "maskgit.steps=4"]) == 0
    with np.load(out / "samples.npz") as data:
        images, labels = data["arr_0"], data["arr_1"]
    assert images.shape == (12, 32, 32, 1) and images.dtype == np.uint8
    assert labels.tolist() == [1, 5, 7] * 4
    grid = Image.open(out / "grid.png")
    assert grid.height == 3 * (32 * 2 + 2)  # one row per requested class
    meta = json.loads((out / "meta.json").read_text())
    assert meta["nfe_per_image"]["total"] == 4 and meta["recipe"]["configs"]["maskgit"]["steps"] == 4
    assert "images/s" in capsys.readouterr().out


def test_sample_rejects_bad_input(tmp_path, capsys) -> None:
    assert main(["sample", "--n", "2", "--out", str(tmp_path), "--set", "maskgit.step=4"]) == 2
    assert "did you mean 'steps'" in capsys.readouterr().err
    assert main(["sample", "--n", "2", "--classes", "12", "--out", str(tmp_path)]) == 2
    assert "class ids" in capsys.readouterr().err
    assert main(["sample", "--n", "2", "--methods", "token_critc", "--out", str(tmp_path)]) == 2
    assert "did you mean 'token_critic'" in capsys.readouterr().err


def test_fit_rejects_unknown_and_bad_knobs(capsys) -> None:
    """`migbench fit METHOD --set knob=value` checks the knobs against the method's fit config."""
    assert main(["fit", "self_guidance", "--set", "label=mask"]) == 2
    assert "unknown knob fit self_guidance.label" in capsys.readouterr().err
    assert main(["fit", "ka_mig", "--set", "init=scratch"]) == 2
    assert "unknown knob fit ka_mig.init" in capsys.readouterr().err
    assert main(["fit", "token_critic", "--set", "only=semantic"]) == 2
    assert "unknown knob fit token_critic.only" in capsys.readouterr().err
    assert main(["fit", "ka_mig", "--set", "only=semanti"]) == 2
    assert "semantic" in capsys.readouterr().err
    assert main(["fit", "ka_mig", "--set", "only=incompatibility", "--set", "lr=0"]) == 2
    assert "lr must be positive" in capsys.readouterr().err
    assert main(["fit", "halton"]) == 2
    assert "nothing to train" in capsys.readouterr().err


def test_eval_prints_and_writes_json(tmp_path, capsys) -> None:
    out = tmp_path / "s"
    main(["sample", "--n", "20", "--out", str(out), "--set", "maskgit.steps=4"])
    assert main(["eval", str(out / "samples.npz"), "--ref", "fmnist-test"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert set(result["metrics"]) >= {"fid", "is_mean", "kid_mean", "precision", "recall", "density", "coverage",
                                      "class_accuracy", "per_class"}
    assert result["provenance"]["n"] == 20 and result["provenance"]["reference"] == "fmnist-test"
    assert "fid" in capsys.readouterr().out


def test_eval_missing_file(tmp_path) -> None:
    assert main(["eval", str(tmp_path / "nope.npz")]) == 2


def test_info_lists_methods_and_knobs(capsys) -> None:
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    for name in ("maskgit", "halton", "emigm", "cfg_interval", "choice_temperature", "fmnist_vq"):
        assert name in text


def leftovers(folder) -> list[str]:
    """Scratch files or folders a command left beside or in ``folder``."""
    return [p.name for p in [*folder.parent.iterdir(), *(folder.iterdir() if folder.is_dir() else [])]
            if ".staging-" in p.name or ".old-" in p.name or p.name.endswith(".tmp")]


def test_sample_outputs_appear_together_or_not_at_all(tmp_path, monkeypatch) -> None:
    from migbench import images

    out = tmp_path / "s"
    argv = ["sample", "--backbone", "toy", "--n", "10", "--batch-size", "5", "--out", str(out)]
    real_grid = images.save_grid

    def killed(*args, **kwargs):
        raise RuntimeError("killed while drawing the grid")

    monkeypatch.setattr(images, "save_grid", killed)
    assert main(argv) == 2
    assert not out.exists() and not leftovers(out)  # no samples.npz without its grid and meta
    monkeypatch.setattr(images, "save_grid", real_grid)
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "meta.json", "samples.npz"]
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "eval.json").write_text("{}")  # the evaluation of these samples
    monkeypatch.setattr(images, "save_grid", killed)
    assert main([*argv, "--seed", "1"]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "eval.json"} == first
    monkeypatch.setattr(images, "save_grid", real_grid)
    assert main([*argv, "--seed", "1"]) == 0  # new samples: the old ones' eval.json goes with them
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "meta.json", "samples.npz"]
    assert (out / "samples.npz").read_bytes() != first["samples.npz"] and not leftovers(out)
    (out / "notes.txt").write_text("mine")  # a folder holding other files keeps them
    (out / "eval.json").write_text("{}")
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "meta.json", "notes.txt", "samples.npz"]
    assert (out / "samples.npz").read_bytes() == first["samples.npz"] and not leftovers(out)


def test_eval_writes_its_json_atomically_beside_the_samples(tmp_path) -> None:
    out = tmp_path / "s"
    assert main(["sample", "--n", "20", "--out", str(out), "--set", "maskgit.steps=4"]) == 0
    assert main(["eval", str(out / "samples.npz"), "--ref", "fmnist-test", "--no-prc"]) == 0
    assert json.loads((out / "eval.json").read_text())["provenance"]["n"] == 20 and not leftovers(out)
