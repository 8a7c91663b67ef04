"""The per-class view: class accuracy and FID per class at each run's best-FID point.

Rows carry ``metrics.per_class`` (:mod:`migbench.benchmarks.metrics.diversity`); a point's classes
are averaged over its seeds. Up to ``HEATMAP_MAX_CLASSES`` classes are drawn as a heat-map of
runs x classes with every value written in its cell; more classes (1,000 for ImageNet) are
summarised: per run, the distribution over classes as a box plot, and in Markdown the
``EXTREMES`` worst and best classes by per-class FID averaged over the runs.

Per-class FID at n samples per class in d feature dimensions is biased upward, the more so the
smaller n / d; below n = ``RELIABLE_N_PER_DIM`` x d the view says so (and compares runs at equal n
only, never with the overall FID).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from tabulate import tabulate  # noqa: E402

HEATMAP_MAX_CLASSES = 50
EXTREMES = 10
RELIABLE_N_PER_DIM = 2
SPLITS = {"labels": "by their labels",
          "predicted": "by the class the metrics network predicts (its errors raise per-class FID)"}


def seed_mean(per_seed: list[list[float | None]]) -> np.ndarray:
    """Per class, the mean over the seeds that have a value (None: no value); NaN where none has."""
    values = np.array([[np.nan if v is None else v for v in seed] for seed in per_seed], dtype=np.float64)
    counts = np.isfinite(values).sum(axis=0)
    return np.where(counts > 0, np.nansum(values, axis=0) / np.maximum(counts, 1), np.nan)


def best_points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run label (in row order), its lowest mean-FID point among the rows that carry per-class
    scores: label, swept values, mean FID, per-class arrays averaged over seeds, smallest n per
    class over seeds, feature dimension, reference split, seeds."""
    points: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if "per_class" in row["metrics"]:
            points.setdefault((row["label"], json.dumps(row["swept"], sort_keys=True)), []).append(row)
    best: dict[str, dict[str, Any]] = {}
    for (label, _), seeds in points.items():
        fid = float(np.mean([r["metrics"]["fid"] for r in seeds]))
        if label in best and best[label]["fid"] <= fid:
            continue
        per_class = [r["metrics"]["per_class"] for r in seeds]
        best[label] = {
            "label": label, "fid": fid, "seeds": len(seeds),
            "swept": ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in seeds[0]["swept"].items()) or "-",
            "class_accuracy": seed_mean([p["class_accuracy"] for p in per_class]),
            "class_fid": seed_mean([p["fid"] for p in per_class]),
            "n": np.min([p["n"] for p in per_class], axis=0), "feature_dim": per_class[0]["feature_dim"],
            "reference_classes": per_class[0]["reference_classes"]}
    return list(best.values())


def class_frames(points: list[dict[str, Any]], class_names: Sequence[str] | None) -> dict[str, pd.DataFrame]:
    """{"class_accuracy", "fid"}: runs (``label (swept)``) x classes."""
    count = len(points[0]["class_accuracy"])
    names = list(class_names) if class_names and len(class_names) == count else [str(c) for c in range(count)]
    index = [f"{p['label']} ({p['swept']})" for p in points]
    return {"class_accuracy": pd.DataFrame([p["class_accuracy"] for p in points], index=index, columns=names),
            "fid": pd.DataFrame([p["class_fid"] for p in points], index=index, columns=names)}


def _heatmap(ax: Axes, frame: pd.DataFrame, cmap: str, title: str, digits: int) -> None:
    """Runs x classes, every value in its cell; a cell without a value is blank, marked n/a."""
    image = ax.imshow(frame.to_numpy(), cmap=cmap, aspect="auto")
    ax.set_xticks(range(frame.shape[1]), frame.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(frame.shape[0]), frame.index, fontsize=8)
    for (i, j), value in np.ndenumerate(frame.to_numpy()):
        if not np.isfinite(value):
            ax.text(j, i, "n/a", ha="center", va="center", fontsize=6.5, color="grey")
            continue
        red, green, blue, _ = image.cmap(image.norm(value))
        shade = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"  # legible on the cell
        ax.text(j, i, f"{value:.{digits}f}", ha="center", va="center", fontsize=6.5, color=shade)
    ax.set_title(title, fontsize=9)
    plt.colorbar(image, ax=ax, fraction=0.04, pad=0.02)


def _distribution(ax: Axes, frame: pd.DataFrame, title: str) -> None:
    """Per run, a horizontal box plot of its values over all classes (whiskers 5th-95th percentile)."""
    data = [row[np.isfinite(row)] for row in frame.to_numpy()]
    ax.boxplot(data, orientation="horizontal", whis=(5, 95), showfliers=False, widths=0.6)
    ax.set_yticks(range(1, len(frame) + 1), frame.index, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(f"{title}\nbox: quartiles and median; whiskers: 5th-95th percentile of classes", fontsize=9)
    ax.grid(alpha=0.3, axis="x")


def plot_per_class(points: list[dict[str, Any]], path: Path, title: str,
                   class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The heat-maps (up to ``HEATMAP_MAX_CLASSES`` classes) or the per-run distributions over
    classes; returns {"kind": "heatmap" | "summary", "class_accuracy": frame, "fid": frame} (the
    frames are what was drawn: runs x classes)."""
    frames = class_frames(points, class_names)
    classes = frames["fid"].shape[1]
    kind = "heatmap" if classes <= HEATMAP_MAX_CLASSES else "summary"
    height = 1.6 + 0.32 * len(points)
    if kind == "heatmap":
        width = min(4.0 + 0.55 * classes, 13.0)
        fig, axes = plt.subplots(2, 1, figsize=(width, 2 * height + 1.0), dpi=120)
        _heatmap(axes[0], frames["class_accuracy"], "viridis", "class accuracy (yellow: higher, better)", 2)
        _heatmap(axes[1], frames["fid"], "viridis_r", "per-class FID (yellow: lower, better)", 1)
    else:
        fig, axes = plt.subplots(1, 2, figsize=(13, height + 0.6), dpi=120, sharey=True)
        _distribution(axes[0], frames["class_accuracy"], f"class accuracy over {classes} classes (higher is better)")
        _distribution(axes[1], frames["fid"], f"per-class FID over {classes} classes (lower is better)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.98))  # the title clear of the first panel's
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return {"kind": kind, **frames}


def bias_note(points: list[dict[str, Any]]) -> str:
    """One sentence: samples per class against feature dimensions, and the reference split."""
    n = int(min(p["n"].min() for p in points))
    dim = int(points[0]["feature_dim"])
    split = sorted({SPLITS[p["reference_classes"]] for p in points})
    text = f"At least {n} samples per class in {dim} feature dimensions; reference images split {' / '.join(split)}. "
    if n < RELIABLE_N_PER_DIM * dim:
        short = sum(int((p["n"] < RELIABLE_N_PER_DIM * dim).sum()) for p in points)
        text += (f"n < {RELIABLE_N_PER_DIM} × {dim} for {short} of {sum(len(p['n']) for p in points)} "
                 "(run, class) cells, so per-class FID is biased upward: compare runs at equal n, not with "
                 "the overall FID.")
    return text


def per_class_markdown(points: list[dict[str, Any]], frames: dict[str, pd.DataFrame]) -> list[str]:
    """A per-run summary table (mean, worst class) and, for many classes, the worst and best
    ``EXTREMES`` classes by per-class FID averaged over the runs."""
    body = []
    for p, (_, accuracy), (_, fid) in zip(points, frames["class_accuracy"].iterrows(),
                                          frames["fid"].iterrows(), strict=True):
        body.append([p["label"], p["swept"], f"{np.nanmean(accuracy):.3f}",
                     f"{accuracy.min():.3f} ({accuracy.idxmin()})", f"{np.nanmean(fid):.2f}",
                     f"{fid.max():.2f} ({fid.idxmax()})", p["seeds"]])
    lines = [tabulate(body, headers=["run", "swept", "class acc (mean)", "class acc (worst class)",
                                     "per-class FID (mean)", "per-class FID (worst class)", "seeds"],
                      tablefmt="github", disable_numparse=True), ""]
    classes = frames["fid"].shape[1]
    if classes > HEATMAP_MAX_CLASSES:
        ranked = pd.DataFrame({"fid": frames["fid"].mean(), "acc": frames["class_accuracy"].mean()}).sort_values("fid")
        for name, part in ((f"{EXTREMES} worst classes", ranked.iloc[::-1][:EXTREMES]),
                           (f"{EXTREMES} best classes", ranked[:EXTREMES])):
            rows = [[c, f"{r['fid']:.2f}", f"{r['acc']:.3f}"] for c, r in part.iterrows()]
            lines += [f"{name} of {classes}, by per-class FID averaged over the runs:", "",
                      tabulate(rows, headers=["class", "per-class FID (mean over runs)", "class acc (mean over runs)"],
                               tablefmt="github", disable_numparse=True), ""]
    return lines
