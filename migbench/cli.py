"""The `migbench` command line: data, train, fit, diagnose, sample, eval, sweep, report, info, demo."""

from __future__ import annotations

import argparse
import inspect
import shlex
import sys
from pathlib import Path
from typing import Any

from migbench.precision import HEAD_DTYPES, PRECISIONS


def _cmd_data(args: argparse.Namespace) -> int:
    from migbench.data import DatasetMissingError, load_split

    try:
        for split in ("train", "test"):
            ds = load_split(split, args.data_dir, allow_download=not args.quiet)
            if not args.quiet:
                print(f"{split}: {len(ds)} images from {ds.source}")
    except DatasetMissingError as err:
        if not args.quiet:
            print(err, file=sys.stderr)
        return 1
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    command = args.command_line
    default_dir = f"runs/{args.what}" + (f"_{args.recipe}" if args.what == "backbone" and args.recipe != "maskgit" else "")
    run_dir = Path(args.run_dir or default_dir)
    if args.what == "tokenizer":
        from migbench.backbones.train_tokenizer import TokenizerRecipe, train_tokenizer

        recipe = TokenizerRecipe(**({"steps": args.steps} if args.steps else {}))
        train_tokenizer(run_dir, recipe=recipe, data_dir=args.data_dir, command=command, precision=args.precision)
    elif args.what == "backbone":
        from migbench.backbones.train_backbone import BackboneRecipe, train_backbone

        recipe = BackboneRecipe.named(args.recipe, steps=args.steps)
        train_backbone(run_dir, recipe=recipe, data_dir=args.data_dir, command=command, precision=args.precision)
    elif args.what == "classifier":
        from migbench.benchmarks.train_classifier import ClassifierRecipe, train_classifier

        recipe = ClassifierRecipe(**({"steps": args.steps} if args.steps else {}))
        train_classifier(run_dir, recipe=recipe, data_dir=args.data_dir, command=command, precision=args.precision)
    print(f"weights and manifest entry written; training log in {run_dir}/train.log")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from migbench import registry

    method = registry.method(args.method)
    if not hasattr(method, "fit"):
        print(f"migbench fit: method {args.method!r} has nothing to train", file=sys.stderr)
        return 2
    command = args.command_line
    options = {k: v for k, v in (("steps", args.steps), ("label", args.label),
                                 ("graphs_only", args.graphs_only or None), ("only", args.only),
                                 ("init", args.init), ("lr", args.lr), ("precision", args.precision))
               if v is not None}
    accepted = inspect.signature(method.fit).parameters
    unknown = [k for k in options if k not in accepted]
    if unknown:
        print(f"migbench fit {args.method}: no option {', '.join('--' + k for k in unknown)}", file=sys.stderr)
        return 2
    suffixes = (args.only, args.label, args.init, args.lr and f"lr{args.lr:g}")
    run_dir = args.run_dir or f"runs/{args.method}" + "".join(f"_{v}" for v in suffixes if v)
    method.fit(Path(run_dir), command, **options)
    print(f"weights and manifest entry written; training log in {run_dir}/train.log")
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from migbench.methods.ka_mig.diagnostics import diagnose

    text = diagnose(maps=args.maps).markdown()
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(f"<!-- written by `{args.command_line}` -->\n{text}\n", encoding="utf-8")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    import json
    import platform
    import time

    import torch

    from migbench import registry
    from migbench.data import CLASS_NAMES
    from migbench.generate import generate
    from migbench.images import save_grid, save_samples
    from migbench.recipe import parse_overrides, resolve

    recipe = resolve(args.methods, parse_overrides(args.set))
    started = time.perf_counter()
    stack = registry.backbone(args.backbone)()
    labels = None
    if args.classes:
        classes = torch.tensor(parse_classes(args.classes))
        labels = classes[torch.arange(args.n) % len(classes)]
    result = generate(stack, recipe, args.n, args.seed, batch_size=args.batch_size,
                      device=args.device, precision=args.precision, head_dtype=args.head_dtype, labels=labels,
                      compile_backbone=args.compile)
    out = Path(args.out)
    save_samples(out / "samples.npz", result.images, result.labels)
    save_grid(out / "grid.png", result.images, result.labels, CLASS_NAMES)
    meta = {"backbone": stack.name, "recipe": recipe.describe(), "n": args.n, "seed": args.seed,
            "batch_size": args.batch_size, "nfe_per_image": result.nfe_per_image,
            "extra_parameters": result.extra_parameters,
            "sampling_seconds": round(result.sampling_seconds, 3),
            "images_per_second": round(result.images_per_second, 2),
            "wall_seconds": round(time.perf_counter() - started, 3), "weights": stack.weight_hashes,
            "device": str(args.device), "precision": result.precision, "head_dtype": result.head_dtype,
            "compile_backbone": args.compile,
            "versions": {"torch": torch.__version__, "python": platform.python_version()}}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{args.n} samples of {recipe.label()} on {stack.name}: "
          f"{result.images_per_second:.1f} images/s, NFE/image {result.nfe_per_image['total']:g}")
    print(f"wrote {out / 'samples.npz'}, {out / 'grid.png'}, {out / 'meta.json'}")
    return 0


def parse_classes(text: str) -> list[int]:
    """``--classes`` "0,3,7" -> [0, 3, 7]; anything else is a ValueError naming the option."""
    try:
        classes = [int(c) for c in text.split(",")]
    except ValueError:
        raise ValueError(f"--classes expects comma-separated class ids such as 0,3,7, got {text!r}") from None
    return classes


def _print_metrics(title: str, metrics: dict[str, Any]) -> None:
    """The scalar metrics as a table (``per_class`` lists stay in the JSON output)."""
    from tabulate import tabulate

    print(title)
    print(tabulate([[k, f"{v:.4f}"] for k, v in metrics.items() if not isinstance(v, dict)],
                   headers=["metric", "value"]))


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from migbench.benchmarks.metrics.evaluate import Extractor, evaluate
    from migbench.images import load_png_folder, load_samples

    path = Path(args.samples)
    if path.is_dir():
        images, labels = load_png_folder(path)
    elif path.is_file():
        images, labels = load_samples(path)
    else:
        print(f"migbench eval: {path} is neither a samples .npz nor a folder of PNGs", file=sys.stderr)
        return 2
    extractor = (Extractor.inception(args.inception_weights) if args.extractor == "inception-v3-compat"
                 else Extractor.fmnist())
    result = evaluate(images, labels, ref=args.ref, extractor=extractor, data_dir=args.data_dir,
                      prc=not args.no_prc)
    _print_metrics(f"{path} ({len(images)} images) against {args.ref}", result["metrics"])
    out = Path(args.out) if args.out else (path if path.is_dir() else path.parent) / "eval.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _cmd_floors(args: argparse.Namespace) -> int:
    from migbench.benchmarks.metrics.floors import floors

    result = floors(args.n, args.ref, args.seed, args.data_dir)
    for kind in ("data", "tokenizer"):
        _print_metrics(f"{kind} floor: N={args.n} {result['source_split']} images"
                       f"{' (VQ reconstructions)' if kind == 'tokenizer' else ''} vs {args.ref}",
                       result[kind]["metrics"])
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from migbench import registry, weights
    from migbench.config import describe_knobs

    for name in registry.METHODS:
        cls = registry.method(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"method {name}: {doc}")
        rows = [[r["knob"], r["type"], repr(r["default"]), "" if r["choices"] is None else "|".join(map(str, r["choices"])),
                 r["help"]] for r in describe_knobs(cls.config_cls)]
        print(tabulate(rows, headers=["knob", "type", "default", "choices", "meaning"]))
        print()
    print("backbones:", ", ".join(registry.BACKBONES))
    manifest = weights.read_manifest()
    rows = [[n, e["file"], e["sha256"][:12], json_compact(e["metrics"])] for n, e in sorted(manifest.items())]
    print(tabulate(rows, headers=["weights", "file", "sha256", "metrics"]))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    import os

    from migbench.benchmarks.sweep import relaunch, sweep

    if args.processes > 1 and not os.environ.get("MIGBENCH_LAUNCHED"):
        forwarded = [args.suite, *(["--no-floors"] if args.no_floors else []),
                     *(["--keep-samples"] if args.keep_samples else []),
                     *(["--results", args.results] if args.results else [])]
        return relaunch(forwarded, args.processes)
    folder = sweep(args.suite, results_root=Path(args.results) if args.results else None,
                   floors=not args.no_floors, keep_samples=args.keep_samples)
    print(f"results in {folder}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from migbench.benchmarks.report import report, update_readme
    from migbench.paths import repo_root

    results = Path(args.results) if args.results else None
    path = report(args.suite, results_root=results, reports_root=Path(args.reports) if args.reports else None)
    print(f"report written to {path}")
    if args.update_readme:
        update_readme(args.suite, repo_root() / "README.md", results)
        print(f"README.md block of {args.suite} updated")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from migbench.benchmarks.report import report
    from migbench.benchmarks.sweep import sweep

    started = time.monotonic()
    folder = sweep(args.suite)
    path = report(args.suite)
    print()
    print(path.read_text(encoding="utf-8").split("### Pareto front")[0])
    print(f"demo finished in {time.monotonic() - started:.0f} s: results in {folder}, report in {path} "
          f"(plot {path.parent / 'fid_is.png'})")
    return 0


def _cmd_regress(args: argparse.Namespace) -> int:
    from migbench.benchmarks.regression import BASELINE, check

    failures = check(update=args.update)
    if args.update:
        print(f"baseline written to {BASELINE}")
        return 0
    for failure in failures:
        print("REGRESSION:", failure)
    print("regression check passed" if not failures else f"{len(failures)} regression(s)")
    return 1 if failures else 0


def json_compact(d: dict) -> str:
    """Scalar metrics as ``k=v`` (nested breakdowns stay in manifest.json)."""
    return ", ".join(f"{k}={v}" for k, v in d.items() if not isinstance(v, dict))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="migbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="check that Fashion-MNIST can be found, and where")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--quiet", action="store_true", help="no output, no download; exit code only")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("train", help="train a component of the embedded Fashion-MNIST stack")
    p.add_argument("what", choices=["tokenizer", "backbone", "classifier"])
    p.add_argument("--recipe", default="maskgit", help="backbone recipe: maskgit or emigm")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
    p.add_argument("--run-dir", default=None, help="checkpoint/log folder (default runs/WHAT, runs/backbone_RECIPE)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="training autocast; auto = bf16 where the device runs it natively, else fp32 "
                        "(the classifier: fp32)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("fit", help="train a method's own components (critic, adapter, graph modules)")
    p.add_argument("method", help="a method with trainable parts, e.g. token_critic")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
    p.add_argument("--label", default=None, help="token_critic: mask (paper) or differs (lucidrains)")
    p.add_argument("--init", default=None, choices=("generator", "scratch"),
                   help="token_critic: start the critic from the generator's weights (default) or from scratch")
    p.add_argument("--graphs-only", action="store_true", help="ka_mig: only build and save the three graphs")
    p.add_argument("--only", default=None, choices=("cooccurrence", "semantic", "incompatibility", "head"),
                   help="ka_mig: train a one-graph ablation model (weights fmnist_ka_mig_<graph>), "
                        "or with head the head-only control (every graph off)")
    p.add_argument("--lr", type=float, default=None,
                   help="ka_mig: learning rate instead of the paper's 1e-4 (a probe; weights named ..._lr<value>)")
    p.add_argument("--run-dir", default=None, help="checkpoint/log folder (default runs/METHOD[_OPTION...])")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="training autocast; auto = bf16 where the device runs it natively, else fp32")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("diagnose", help="ka_mig: what the incompatibility prior could give, and what each trained model takes")
    p.add_argument("method", choices=["ka_mig"])
    p.add_argument("--maps", type=int, default=10_000, help="held-out token maps to measure on (at most the test split's 10,000)")
    p.add_argument("--out", default=None, help="also write the table to this markdown file")
    p.set_defaults(func=_cmd_diagnose)

    p = sub.add_parser("sample", help="sample images with a methods list; writes samples.npz, grid.png, meta.json")
    p.add_argument("--backbone", default="fmnist")
    p.add_argument("--methods", default="maskgit", help="comma-separated list, e.g. halton or ka_mig,self_guidance")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KNOB=VALUE",
                   help="override a knob (repeatable), e.g. --set maskgit.cfg_scale=2")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--classes", default=None, help="comma-separated class ids to cycle through (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="autocast precision; auto = bf16 where the device runs it natively, else fp32")
    p.add_argument("--head-dtype", default="auto", choices=HEAD_DTYPES,
                   help="fp32 runs the output head in fp32 under bf16/fp16 autocast")
    p.add_argument("--compile", action="store_true",
                   help="run the backbone through torch.compile (static shapes; pays on GPUs, costs a compile first)")
    p.add_argument("--out", default="out/sample")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("eval", help="FID, IS, KID, precision/recall and class accuracy of samples")
    p.add_argument("samples", help="a samples.npz (ADM layout) or a folder of PNGs")
    p.add_argument("--ref", default="fmnist-train", help="fmnist-train, fmnist-test, or an images .npz")
    p.add_argument("--out", default=None, help="JSON output (default: eval.json beside the samples)")
    p.add_argument("--no-prc", action="store_true", help="skip precision/recall")
    p.add_argument("--extractor", default="fmnist-classifier", choices=["fmnist-classifier", "inception-v3-compat"],
                   help="feature extractor (inception-v3-compat for ImageNet-scale runs)")
    p.add_argument("--inception-weights", default=None,
                   help="local copy of torch-fidelity's Inception weights (offline use)")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("floors", help="data and tokenizer quality floors at N images")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--ref", default="fmnist-train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=_cmd_floors)

    p = sub.add_parser("sweep", help="run the pending points of a suite (resumable)")
    p.add_argument("suite", help="suite name (benchmarks/suites/NAME.toml) or path")
    p.add_argument("--processes", type=int, default=1, help="shard sampling over P accelerate processes")
    p.add_argument("--results", default=None, help="results root (default results/)")
    p.add_argument("--no-floors", action="store_true", help="skip the quality floors")
    p.add_argument("--keep-samples", action="store_true", help="also save each point's samples.npz")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("report", help="render reports/SUITE from results/SUITE")
    p.add_argument("suite")
    p.add_argument("--results", default=None)
    p.add_argument("--reports", default=None, help="reports root (default reports/)")
    p.add_argument("--update-readme", action="store_true",
                   help="also refresh the suite's <!-- SUITE:begin/end --> block in README.md")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("demo", help="the quick benchmark: sweep + report (what `make demo` runs)")
    p.add_argument("--suite", default="fmnist_quick")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("regress", help="run the CI regression suite and compare with its baseline")
    p.add_argument("--update", action="store_true", help="rewrite the baseline instead of checking")
    p.set_defaults(func=_cmd_regress)

    p = sub.add_parser("info", help="registered methods with their knobs, backbones, and weights")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = "migbench " + " ".join(shlex.quote(a) for a in argv)
    try:
        return int(args.func(args) or 0)
    except (KeyError, ValueError, RuntimeError, FileNotFoundError) as err:
        message = err.args[0] if err.args else repr(err)
        print(f"migbench {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
