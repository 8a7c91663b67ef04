"""The `migbench` command line: data, train, fit, diagnose, sample, eval, sweep, report, info, demo,
fetch, import."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from migbench.precision import HEAD_DTYPES, PRECISIONS


def _registered(name: str) -> Callable[[argparse.Namespace], int]:
    """The command ``name`` of :data:`migbench.registry.COMMANDS`, imported when it runs."""
    def run(args: argparse.Namespace) -> int:
        from migbench import registry

        return int(registry.command(name)(args) or 0)
    return run


def _cmd_fit(args: argparse.Namespace) -> int:
    """`migbench fit METHOD [--backbone STACK] [--set key=value ...]`: train a method's own parts.

    A method with trainable parts declares ``fit_config_cls`` (a dataclass of :func:`knob`
    fields: what to train and how) and ``fit(run_dir, command, stack, config, precision)``."""
    import dataclasses

    from migbench import registry
    from migbench.config import apply_overrides
    from migbench.recipe import parse_overrides

    method = registry.method(args.method)
    if not hasattr(method, "fit"):
        print(f"migbench fit: method {args.method!r} has nothing to train", file=sys.stderr)
        return 2
    config = apply_overrides(method.fit_config_cls(), parse_overrides(args.set), f"fit {args.method}")
    changed = [f"{f.name}{getattr(config, f.name)}" for f in dataclasses.fields(config)
               if getattr(config, f.name) != f.default and f.name != "steps"]
    run_dir = args.run_dir or f"runs/{args.method}" + "".join(f"_{c}" for c in changed)
    check_training_outputs(Path(run_dir))
    stack = registry.backbone(args.backbone)()
    method.fit(Path(run_dir), args.command_line, stack, config, args.precision)
    print(f"weights and manifest entry written; training log in {run_dir}/train.log")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    """`migbench fetch NAME ...`: download known files from the hub into the checkpoint cache."""
    from migbench import checkpoints, registry

    specs = [registry.checkpoint(name) for name in args.names]  # every name checked before any download
    for spec in specs:
        if checkpoints.is_imported(spec.name) and not args.force:
            print(f"{spec.name}: already imported ({checkpoints.record(spec.name)['source_sha256'][:16]}...); "
                  "--force fetches it again")
            continue
        path = checkpoints.fetch(spec)
        print(f"{spec.name}: {path} (source sha256 {checkpoints.record(spec.name)['source_sha256']})")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    """`migbench import NAME PATH`: a file downloaded by hand into the checkpoint cache."""
    from migbench import checkpoints, registry

    spec = registry.checkpoint(args.name)
    path = checkpoints.import_file(spec, Path(args.path))
    entry = checkpoints.record(spec.name)
    print(f"{spec.name}: {path} (source sha256 {entry['source_sha256']}"
          f"{', pinned' if entry['pinned'] else ', recorded now: not pinned by the family'})")
    return 0


def check_training_outputs(run_dir: Path) -> None:
    """Before training: the run folder and the weights folder can be written (one line if not)."""
    from migbench.outputs import check_folder
    from migbench.paths import weights_dir

    check_folder(run_dir, "--run-dir")
    check_folder(weights_dir(), "the weights folder (MIGBENCH_WEIGHTS)")


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from migbench import registry
    from migbench.outputs import check_file, write_text_atomic

    method = registry.method(args.method)
    if not hasattr(method, "diagnose"):
        print(f"migbench diagnose: method {args.method!r} has no diagnostics", file=sys.stderr)
        return 2
    if args.out:
        check_file(Path(args.out), "--out")
    text = method.diagnose(maps=args.maps).markdown()
    print(text)
    if args.out:
        write_text_atomic(Path(args.out), f"<!-- written by `{args.command_line}` -->\n{text}\n")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    import json
    import platform
    import time

    import torch

    from migbench import registry
    from migbench.generate import check_count, generate
    from migbench.images import save_grid, save_samples
    from migbench.outputs import check_folder, files_into
    from migbench.recipe import expand_preset, parse_overrides, resolve

    recipe = resolve(args.methods, expand_preset(args.preset, parse_overrides(args.set)))
    out = Path(args.out)
    check_folder(out, "--out")
    check_device(args.device)
    check_count(args.n, "--n")
    started = time.perf_counter()
    stack = registry.stack(args.backbone, args.random_weights)
    labels = None
    if args.classes:
        classes = torch.tensor(parse_classes(args.classes))
        labels = classes[torch.arange(args.n) % len(classes)]
    result = generate(stack, recipe, args.n, args.seed, batch_size=args.batch_size,
                      device=args.device, precision=args.precision, head_dtype=args.head_dtype, labels=labels,
                      compile_backbone=args.compile, image_normalisation=args.normalise)
    meta = {"backbone": stack.name, "recipe": recipe.describe(), "n": args.n, "seed": args.seed,
            "batch_size": args.batch_size, "nfe_per_image": result.nfe_per_image,
            "extra_parameters": result.extra_parameters,
            "sampling_seconds": round(result.sampling_seconds, 3),
            "images_per_second": round(result.images_per_second, 2),
            "wall_seconds": round(time.perf_counter() - started, 3), "weights": stack.weight_hashes,
            "random_weights": args.random_weights, "image_normalisation": args.normalise,
            "device": str(args.device), "precision": result.precision, "head_dtype": result.head_dtype,
            "compile_backbone": args.compile,
            "versions": {"torch": torch.__version__, "python": platform.python_version()}}
    with files_into(out, replaces=("eval.json",)) as staged:  # all three appear, or none; an old eval.json goes
        save_samples(staged / "samples.npz", result.images, result.labels)
        save_grid(staged / "grid.png", result.images, result.labels, stack.dataset.class_names)
        (staged / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{args.n} samples of {recipe.label()} on {stack.name}{' (random weights)' if args.random_weights else ''}: "
          f"{result.images_per_second:.1f} images/s, NFE/image {result.nfe_per_image['total']:g}")
    print(f"wrote {out / 'samples.npz'}, {out / 'grid.png'}, {out / 'meta.json'}")
    return 0


def check_device(text: str) -> None:
    """``--device``: a device torch knows and this machine has; else a ValueError naming the option."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device {text!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {text}: {torch.cuda.device_count()} CUDA device(s) visible; use cpu or "
                         "one of those")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {text}: MPS is not available here; use cpu")


def parse_classes(text: str) -> list[int]:
    """``--classes`` "0,3,7" -> [0, 3, 7]; anything else is a ValueError naming the option."""
    try:
        classes = [int(c) for c in text.split(",")]
    except ValueError:
        raise ValueError(f"--classes expects comma-separated class ids such as 0,3,7, got {text!r}") from None
    return classes


def _cmd_info(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from migbench import registry, weights
    from migbench.config import describe_knobs
    from migbench.recipe import presets

    for name in registry.METHODS:
        cls = registry.method(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"method {name}: {doc}")
        for title, config_cls in (("knob", cls.config_cls), ("fit knob", getattr(cls, "fit_config_cls", None))):
            if config_cls is None:
                continue
            rows = [[r["knob"], r["type"], repr(r["default"]),
                     "" if r["choices"] is None else "|".join(map(str, r["choices"])), r["help"]]
                    for r in describe_knobs(config_cls)]
            print(tabulate(rows, headers=[title, "type", "default", "choices", "meaning"]))
            print()
    for name, overrides in presets().items():
        print(f"preset {name}: " + ", ".join(f"{k}={v}" for k, v in overrides.items()))
    print("backbones:", ", ".join(registry.BACKBONES))
    manifest = weights.read_manifest()
    rows = [[n, e["file"], e["sha256"][:12], json_compact(e["metrics"])] for n, e in sorted(manifest.items())]
    print(tabulate(rows, headers=["weights", "file", "sha256", "metrics"]))
    print()
    from migbench import checkpoints

    rows = [[name, spec.source, spec.licence,
             checkpoints.record(name)["source_sha256"][:12] if checkpoints.is_imported(name) else "not imported"]
            for name, spec in registry.checkpoints().items()]
    print(tabulate(rows, headers=["public checkpoint", "source", "licence", f"in {checkpoints.checkpoints_dir(create=False)}"]))
    return 0


def json_compact(d: dict) -> str:
    """Scalar metrics as ``k=v`` (nested breakdowns stay in manifest.json)."""
    return ", ".join(f"{k}={v}" for k, v in d.items() if not isinstance(v, dict))


def whole_number(text: str, minimum: int) -> int:
    """An ``int`` option that must be >= ``minimum`` (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a whole number >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def seed_int(text: str) -> int:
    """A seed option: a whole number >= 0."""
    return whole_number(text, 0)


def positive_int(text: str) -> int:
    """A count option: a whole number >= 1."""
    return whole_number(text, 1)


class OneLineParser(argparse.ArgumentParser):
    """Parse errors as one line, ``migbench COMMAND: error: ...`` (exit 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="migbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="check that Fashion-MNIST can be found, and where")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--quiet", action="store_true", help="no output, no download; exit code only")
    p.set_defaults(func=_registered("data"))

    p = sub.add_parser("train", help="train a component of the embedded Fashion-MNIST stack")
    p.add_argument("what", choices=["tokenizer", "backbone", "classifier"])
    p.add_argument("--preset", default="maskgit", help="backbone training preset: maskgit or emigm")
    p.add_argument("--steps", type=positive_int, default=None, help="override the training's step count")
    p.add_argument("--run-dir", default=None, help="checkpoint/log folder (default runs/WHAT, runs/backbone_PRESET)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="training autocast; auto = bf16 where the device runs it natively, else fp32 "
                        "(the classifier: fp32)")
    p.set_defaults(func=_registered("train"))

    p = sub.add_parser("fit", help="train a method's own components (critic, adapter, graph modules) for a stack")
    p.add_argument("method", help="a method with trainable parts, e.g. token_critic (`migbench info` lists "
                                  "each one's fit knobs)")
    p.add_argument("--backbone", default="fmnist", help="the stack to fit on (its backbone stays frozen)")
    p.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE",
                   help="a fit knob (repeatable), e.g. --set steps=100 --set only=semantic")
    p.add_argument("--run-dir", default=None, help="checkpoint/log folder (default runs/METHOD[_KNOBVALUE...])")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="training autocast; auto = bf16 where the device runs it natively, else fp32")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("diagnose", help="a method's own diagnostics (ka_mig: what the incompatibility prior "
                                        "could give, and what each trained model takes)")
    p.add_argument("method", help="a method with diagnostics, e.g. ka_mig")
    p.add_argument("--maps", type=positive_int, default=10_000, help="held-out token maps to measure on (at most the test split's 10,000)")
    p.add_argument("--out", default=None, help="also write the table to this markdown file")
    p.set_defaults(func=_cmd_diagnose)

    p = sub.add_parser("sample", help="sample images with a methods list; writes samples.npz, grid.png, meta.json")
    p.add_argument("--backbone", default="fmnist")
    p.add_argument("--methods", default="maskgit", help="comma-separated list, e.g. halton or ka_mig,self_guidance")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KNOB=VALUE",
                   help="override a knob (repeatable), e.g. --set maskgit.cfg_scale=2")
    p.add_argument("--preset", default=None,
                   help="a named bundle of knob overrides, e.g. valeoai (`migbench info` lists them); "
                        "--set wins over it")
    p.add_argument("--n", type=positive_int, default=100)
    p.add_argument("--classes", default=None, help="comma-separated class ids to cycle through (default all)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=250)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="autocast precision; auto = bf16 where the device runs it natively, else fp32")
    p.add_argument("--head-dtype", default="auto", choices=HEAD_DTYPES,
                   help="fp32 runs the output head in fp32 under bf16/fp16 autocast")
    p.add_argument("--compile", action="store_true",
                   help="run the backbone through torch.compile (static shapes; pays on GPUs, costs a compile first)")
    p.add_argument("--random-weights", action="store_true",
                   help="a public-checkpoint stack with seeded random weights instead of its files (to try the "
                        "pipeline; the samples are noise)")
    p.add_argument("--normalise", default="none", choices=["none", "minmax"],
                   help="minmax: each image stretched by its own min and max from the decoder's unclamped output "
                        "(valeoai's protocol; evaluate with `eval --normalise minmax`)")
    p.add_argument("--out", default="out/sample")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("eval", help="FID, IS, KID, precision/recall and class accuracy of samples")
    p.add_argument("samples", help="a samples.npz (ADM layout) or a folder of PNGs")
    p.add_argument("--ref", default="fmnist-train",
                   help="fmnist-train, fmnist-test, an images .npz (ADM layout; its mu/sigma used for FID), or a "
                        "folder of real images with its crop size: imagenet-val-256 ($MIGBENCH_IMAGENET/val), "
                        "imagenet-train-256-50pc (50 per class), DIR@256; -torchvision: valeoai's crop, not ADM's")
    p.add_argument("--out", default=None, help="JSON output (default: eval.json beside the samples)")
    p.add_argument("--no-prc", action="store_true", help="skip precision/recall")
    p.add_argument("--extractor", default="fmnist-classifier", choices=["fmnist-classifier", "inception-v3-compat"],
                   help="feature extractor (inception-v3-compat for ImageNet-scale runs)")
    p.add_argument("--inception-weights", default=None,
                   help="local copy of torch-fidelity's Inception weights (offline use; default "
                        "$MIGBENCH_INCEPTION_WEIGHTS)")
    p.add_argument("--normalise", default="none", choices=["none", "minmax"],
                   help="per-image normalisation of samples and reference before the extractor "
                        "(minmax: valeoai's per-image min-max stretch)")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=_registered("eval"))

    p = sub.add_parser("floors", help="data and tokenizer quality floors at N images")
    p.add_argument("--n", type=positive_int, default=2000)
    p.add_argument("--ref", default="fmnist-train")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=_registered("floors"))

    p = sub.add_parser("sweep", help="run the pending points of a suite (resumable)")
    p.add_argument("suite", help="suite name (benchmarks/suites/NAME.toml) or path")
    p.add_argument("--processes", type=positive_int, default=1, help="shard sampling over P accelerate processes")
    p.add_argument("--results", default=None, help="results root (default results/)")
    p.add_argument("--no-floors", action="store_true", help="skip the quality floors")
    p.add_argument("--keep-samples", action="store_true", help="also save each point's samples.npz")
    p.add_argument("--n", type=positive_int, default=None,
                   help="samples per point instead of the suite's (results go to SUITE_nN)")
    p.add_argument("--random-weights", action="store_true",
                   help="public-checkpoint stacks with seeded random weights instead of their files, to try the "
                        "pipeline (results go to SUITE_random_weights; the numbers mean nothing)")
    p.set_defaults(func=_registered("sweep"))

    p = sub.add_parser("report", help="render reports/SUITE from results/SUITE")
    p.add_argument("suite", help="suite name (benchmarks/suites/NAME.toml) or path, as for sweep")
    p.add_argument("--results", default=None, help="results root (default results/)")
    p.add_argument("--reports", default=None, help="reports root (default reports/)")
    p.add_argument("--update-readme", action="store_true",
                   help="also refresh the suite's <!-- SUITE:begin/end --> block in README.md")
    p.set_defaults(func=_registered("report"))

    p = sub.add_parser("demo", help="the quick benchmark: sweep + report (what `make demo` runs)")
    p.add_argument("--suite", default="fmnist_quick")
    p.set_defaults(func=_registered("demo"))

    p = sub.add_parser("regress", help="run the CI regression suite and compare with its baseline")
    p.add_argument("--update", action="store_true", help="rewrite the baseline instead of checking")
    p.set_defaults(func=_registered("regress"))

    p = sub.add_parser("fetch", help="download known public checkpoint files into the checkpoint cache "
                       "(`migbench info` lists them)")
    p.add_argument("names", nargs="+", metavar="NAME", help="known checkpoint names, e.g. valeoai_maskgit_256")
    p.add_argument("--force", action="store_true", help="fetch again even where the file is imported")
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser("import", help="import a checkpoint file downloaded by hand (checked, converted once)")
    p.add_argument("name", help="a known checkpoint name (`migbench info` lists them)")
    p.add_argument("path", help="the downloaded file (.pth, .ckpt, .bin or .safetensors), or a "
                                "PyTorchModelHubMixin folder (config.json + model.safetensors)")
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser("info", help="registered methods with their knobs, backbones, and weights")
    p.set_defaults(func=_cmd_info)
    return parser


def _message(err: Exception) -> str:
    """One line for ``err``: a file error names its file, any other says its first argument."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    text = str(err.args[0]) if err.args else ""
    return text.splitlines()[0] if text.strip() else repr(err)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help (0) or a parse error (2, already printed)
        return int(done.code or 0)
    args.command_line = "migbench " + " ".join(shlex.quote(a) for a in argv)
    try:
        return int(args.func(args) or 0)
    except (KeyError, ValueError, RuntimeError, OSError) as err:
        print(f"migbench {args.command}: error: {_message(err)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"migbench {args.command}: error: out of memory; use a smaller --n, --batch-size or step count",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
