"""The harness's and the Fashion-MNIST family's commands of `migbench` (data, train, eval, floors,
sweep, report, demo, regress), registered in :data:`migbench.registry.COMMANDS`.

Each takes the parsed arguments of :func:`migbench.cli.build_parser` and returns an exit code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _print_metrics(title: str, metrics: dict[str, Any]) -> None:
    """The scalar metrics as a table (``per_class`` lists stay in the JSON output)."""
    from tabulate import tabulate

    print(title)
    print(tabulate([[k, f"{v:.4f}"] for k, v in metrics.items() if not isinstance(v, dict)],
                   headers=["metric", "value"]))


def data_command(args: argparse.Namespace) -> int:
    from migbench.backbones.fmnist.data import DatasetMissingError, load_split

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


def train_command(args: argparse.Namespace) -> int:
    from migbench.cli import check_training_outputs

    command = args.command_line
    default_dir = f"runs/{args.what}" + (f"_{args.preset}" if args.what == "backbone" and args.preset != "maskgit" else "")
    run_dir = Path(args.run_dir or default_dir)
    check_training_outputs(run_dir)
    if args.what == "tokenizer":
        from migbench.backbones.fmnist.train_tokenizer import TokenizerTraining, train_tokenizer

        training = TokenizerTraining(**({"steps": args.steps} if args.steps else {}))
        train_tokenizer(run_dir, training=training, data_dir=args.data_dir, command=command, precision=args.precision)
    elif args.what == "backbone":
        from migbench.backbones.fmnist.train_backbone import BackboneTraining, train_backbone

        training = BackboneTraining.preset(args.preset, steps=args.steps)
        train_backbone(run_dir, training=training, data_dir=args.data_dir, command=command, precision=args.precision)
    elif args.what == "classifier":
        from migbench.benchmarks.train_classifier import ClassifierTraining, train_classifier

        training = ClassifierTraining(**({"steps": args.steps} if args.steps else {}))
        train_classifier(run_dir, training=training, data_dir=args.data_dir, command=command, precision=args.precision)
    print(f"weights and manifest entry written; training log in {run_dir}/train.log")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    import json

    from migbench.benchmarks.metrics.evaluate import (
        MIN_SAMPLES,
        Extractor,
        check_reference,
        check_samples,
        evaluate,
    )

    from migbench.images import load_png_folder, load_samples
    from migbench.outputs import check_file, write_text_atomic

    path = Path(args.samples)
    if not path.exists():
        print(f"migbench eval: error: {path} is neither a samples .npz nor a folder of PNGs", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else (path if path.is_dir() else path.parent) / "eval.json"
    check_file(out, "--out" if args.out else "--out (default: eval.json beside the samples)")
    if args.inception_weights and args.extractor != "inception-v3-compat":
        raise ValueError(f"--inception-weights applies to --extractor inception-v3-compat only, not {args.extractor}")
    check_reference(args.ref, args.data_dir)
    extractor = Extractor.named(args.extractor, args.inception_weights, args.normalise)
    images, labels = load_png_folder(path) if path.is_dir() else load_samples(path)
    check_samples(images, minimum=MIN_SAMPLES)
    result = evaluate(images, labels, ref=args.ref, extractor=extractor, data_dir=args.data_dir,
                      prc=not args.no_prc)
    _print_metrics(f"{path} ({len(images)} images) against {args.ref}", result["metrics"])
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def floors_command(args: argparse.Namespace) -> int:
    from migbench.benchmarks.metrics.evaluate import check_reference
    from migbench.benchmarks.metrics.floors import floors

    check_reference(args.ref, args.data_dir)
    result = floors(args.n, args.ref, args.seed, args.data_dir)
    for kind in ("data", "tokenizer"):
        _print_metrics(f"{kind} floor: N={args.n} {result['source_split']} images"
                       f"{' (VQ reconstructions)' if kind == 'tokenizer' else ''} vs {args.ref}",
                       result[kind]["metrics"])
    return 0


def sweep_command(args: argparse.Namespace) -> int:
    import os

    from migbench.benchmarks.lock import LAUNCHER_PID

    from migbench.processes import die_with_launcher

    launched = bool(os.environ.get("MIGBENCH_LAUNCHED"))
    if launched and LAUNCHER_PID in os.environ:  # a worker of relaunch(): die with it, from the start
        die_with_launcher(int(os.environ[LAUNCHER_PID]))

    from migbench.benchmarks.results import results_root
    from migbench.benchmarks.suite import for_sweep
    from migbench.benchmarks.sweep import relaunch, sweep

    from migbench.outputs import check_folder

    root = Path(args.results) if args.results else None
    check_folder(results_root(root), "--results")
    suite = for_sweep(args.suite, args.random_weights, args.n)
    if args.processes > 1 and not launched:
        forwarded = [args.suite, *(["--no-floors"] if args.no_floors else []),
                     *(["--keep-samples"] if args.keep_samples else []),
                     *(["--random-weights"] if args.random_weights else []),
                     *(["--n", str(args.n)] if args.n is not None else []),
                     *(["--results", args.results] if args.results else [])]
        return relaunch(forwarded, args.processes, root, suite)
    folder = sweep(suite, results_root=root, floors=not args.no_floors, keep_samples=args.keep_samples)
    print(f"results in {folder}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from migbench.benchmarks.report import report, update_readme

    from migbench.outputs import check_folder
    from migbench.paths import repo_root

    results = Path(args.results) if args.results else None
    reports = Path(args.reports) if args.reports else repo_root() / "reports"
    check_folder(reports, "--reports")
    path = report(args.suite, results_root=results, reports_root=reports)
    print(f"report written to {path}")
    if args.update_readme:
        update_readme(args.suite, repo_root() / "README.md", results)
        print(f"README.md block of {args.suite} updated")
    return 0


def demo_command(args: argparse.Namespace) -> int:
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


def regress_command(args: argparse.Namespace) -> int:
    from migbench.benchmarks.regression import BASELINE, check

    failures = check(update=args.update)
    if args.update:
        print(f"baseline written to {BASELINE}")
        return 0
    for failure in failures:
        print("REGRESSION:", failure)
    print("regression check passed" if not failures else f"{len(failures)} regression(s)")
    return 1 if failures else 0

