"""Report figures of one provenance group: FID against IS, precision-recall with density-coverage,
and FID against cost.

Each function draws the aggregated table of :func:`migbench.benchmarks.report.aggregate` (one
record per run and swept values: metric means over seeds with 95% half-widths ``<metric>_ci``,
images/s of the fastest seed) and returns the points it drew, one row per point, so a test can
hold a drawn point against its result rows. A run keeps its colour and marker in every figure;
the legend sits outside the axes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

PLOT_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
AXIS_NAMES = {"density": "density (quality; 1: as dense as the data, above: crowded)"}
FLOOR_STYLES = {"data": ("*", ":"), "tokenizer": ("p", "--")}  # marker in metric planes, line style for FID


def plot_colors() -> list[tuple[float, ...]]:
    """18 distinct colours: tab10, then Dark2, so a suite's first 18 runs never share a colour."""
    return [*plt.get_cmap("tab10").colors, *plt.get_cmap("Dark2").colors]


def runs(table: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame, dict[str, Any]]]:
    """(label, its points in swept order, matplotlib style) per run, in the table's order. Colour and
    marker cycle at different periods (18, 7): no two of the first 126 runs look alike."""
    colors = plot_colors()
    for i, (label, group) in enumerate(table.groupby("label", sort=False)):
        group = group.sort_values("swept_value", key=lambda s: pd.to_numeric(s, errors="coerce"))
        yield str(label), group, {"color": colors[i % len(colors)], "marker": PLOT_MARKERS[i % len(PLOT_MARKERS)]}


def _draw_run(ax: Axes, group: pd.DataFrame, x: str, y: str, style: dict[str, Any], label: str,
              annotate: bool = True) -> None:
    """One run's points joined in swept order with 95% error bars, its best FID drawn large with a
    black outline, each point labelled by its swept value."""
    ax.errorbar(group[x], group[y], xerr=group.get(f"{x}_ci"), yerr=group.get(f"{y}_ci"), ms=5, capsize=2,
                label=label, **style)
    if annotate:
        for _, r in group.iterrows():
            ax.annotate(str(r["swept_value"]), (r[x], r[y]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color=style["color"])
    best = group.loc[group["fid"].idxmin()]
    ax.plot(best[x], best[y], ms=11, mec="black", mew=1.5, zorder=5, ls="none", **style)


def _points(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The drawn data: label, swept values and the plotted columns of every point."""
    keep = ["label", "swept", *[c for c in columns if c in table]]
    return table[keep].reset_index(drop=True)


def _fid_floors(ax: Axes, floors: dict[str, Any] | None) -> None:
    """Horizontal lines at the data and tokenizer floors' FID."""
    for kind, (_, line) in FLOOR_STYLES.items():
        if floors:
            fid = floors[kind]["metrics"]["fid"]
            ax.axhline(fid, color="grey", ls=line, lw=1)
            ax.annotate(f"{kind} floor {fid:.2f}", (0.0, fid), xycoords=("axes fraction", "data"), fontsize=7,
                        color="grey", xytext=(2, 2), textcoords="offset points")


def _save(fig: Figure, axes: list[Axes], path: Path, legend_columns: int = 1) -> None:
    """One legend for the figure, right of the axes (never over a point), then write ``path``."""
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.97), ncol=legend_columns)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def _legend_columns(table: pd.DataFrame) -> int:
    return 1 if table["label"].nunique() <= 24 else 2


def plot_fid_is(table: pd.DataFrame, floors: dict[str, Any] | None, path: Path, title: str) -> pd.DataFrame:
    """IS on x, FID on y; a line per run label, points labelled by the swept value, each run's best
    FID drawn large with a black outline, the floors' FID as horizontal lines."""
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=120)
    for label, group, style in runs(table):
        _draw_run(ax, group, "is_mean", "fid", style, label)
    _fid_floors(ax, floors)
    ax.set_xlabel("Inception-style score (IS, higher is better)")
    ax.set_ylabel("FID (lower is better)")
    ax.set_title(f"{title}; large outlined marker: a run's best FID", fontsize=10)
    ax.grid(alpha=0.3)
    _save(fig, [ax], path, _legend_columns(table))
    return _points(table, ["is_mean", "fid"])


def _floor_points(ax: Axes, floors: dict[str, Any] | None, x: str, y: str) -> None:
    """The data and tokenizer floors as grey markers in an x-y metric plane, where recorded."""
    for kind, (marker, _) in FLOOR_STYLES.items():
        metrics = floors[kind]["metrics"] if floors else {}
        if x in metrics and y in metrics:
            ax.plot(metrics[x], metrics[y], marker=marker, ms=13, color="dimgrey", mec="black", ls="none", zorder=6)
            ax.annotate(f"{kind} floor", (metrics[x], metrics[y]), textcoords="offset points", xytext=(7, -3),
                        fontsize=7, color="dimgrey")


def plot_precision_recall(table: pd.DataFrame, floors: dict[str, Any] | None, path: Path,
                          title: str) -> pd.DataFrame:
    """Precision against recall along each run's swept knob (Kynkäänniemi et al., NeurIPS 2019) and,
    where the rows have them, density against coverage (Naeem et al., ICML 2020): quality on y,
    diversity on x. 95% seed intervals as error bars, the floors as grey markers, each run's best
    FID large with a black outline."""
    planes = [("recall", "precision")]
    if "density" in table and table["density"].notna().any():
        planes.append(("coverage", "density"))
    fig, axes = plt.subplots(1, len(planes), figsize=(8.0 if len(planes) == 1 else 13.0, 5.5), dpi=120,
                             squeeze=False)
    for ax, (x, y) in zip(axes[0], planes, strict=True):
        for label, group, style in runs(table):
            drawn = group.dropna(subset=[x, y])
            if len(drawn):
                _draw_run(ax, drawn, x, y, style, label)
        _floor_points(ax, floors, x, y)
        ax.set_xlabel(f"{x} (diversity, higher is better)")
        ax.set_ylabel(AXIS_NAMES.get(y, f"{y} (quality, higher is better)"))
        ax.grid(alpha=0.3)
    axes[0][0].set_title("precision vs recall", fontsize=10)
    if len(planes) > 1:
        axes[0][1].set_title("density vs coverage", fontsize=10)
    fig.suptitle(f"{title}; large outlined marker: a run's best FID", fontsize=10)
    _save(fig, list(axes[0]), path, _legend_columns(table))
    return _points(table, [c for plane in planes for c in plane])


def non_dominated(points: pd.DataFrame, lower: str, higher: str | None = None,
                  cost: str | None = None) -> pd.DataFrame:
    """The Pareto front: points no other point beats on ``lower`` (lower is better) and on either
    ``higher`` (higher is better) or ``cost`` (lower is better), i.e. no worse on both and better
    on one."""
    second = points[higher] if higher is not None else -points[cost]
    keep = [i for i, r in points.iterrows()
            if not ((points[lower] <= r[lower]) & (second >= second[i]) &
                    ((points[lower] < r[lower]) | (second > second[i]))).any()]
    return points.loc[keep]


def cost_front(points: pd.DataFrame, cost: str) -> pd.DataFrame:
    """Points no other point beats on both FID and ``cost`` (both lower is better), by cost."""
    return non_dominated(points, "fid", cost=cost).sort_values(cost)


def plot_cost(table: pd.DataFrame, floors: dict[str, Any] | None, path: Path, title: str,
              measured_on: str) -> pd.DataFrame:
    """FID against NFE per image and against seconds per 1,000 images (1000 / images/s of the
    fastest seed, as measured on ``measured_on``), each with the Pareto front of the group's
    points. On the NFE axis the runs sharing an NFE are spread by up to ±4% so they stay apart."""
    data = table.assign(seconds_per_1000=1000.0 / table["images_per_s"])
    labels = list(dict.fromkeys(data["label"]))
    spread = {label: 1.0 + 0.08 * ((i + 0.5) / len(labels) - 0.5) for i, label in enumerate(labels)}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), dpi=120)
    for ax, cost, name in ((axes[0], "nfe", "network evaluations (NFE) per image"),
                           (axes[1], "seconds_per_1000", f"seconds per 1,000 images ({measured_on})")):
        for label, group, style in runs(data):
            drawn = group.assign(x=group[cost] * (spread[label] if cost == "nfe" else 1.0))
            ax.errorbar(drawn["x"], drawn["fid"], yerr=drawn.get("fid_ci"), ms=5, capsize=2, label=label,
                        ls="none", **style)
            best = drawn.loc[drawn["fid"].idxmin()]
            ax.plot(best["x"], best["fid"], ms=11, mec="black", mew=1.5, zorder=5, ls="none", **style)
        if cost == "nfe":  # room around the NFE values, so the spread reads as a cluster around each
            ax.set_xlim(0.85 * data["nfe"].min(), 1.15 * data["nfe"].max())
        left, right = ax.get_xlim()
        front = cost_front(data, cost)
        x = front[cost] * (front["label"].map(spread) if cost == "nfe" else 1.0)  # through the drawn markers
        # steps-post: from each front point on, its FID is reachable; the last step runs to the right edge
        ax.plot([*x, right], [*front["fid"], front["fid"].iloc[-1]], color="black", ls="--", lw=1,
                drawstyle="steps-post", zorder=4, label="Pareto front (FID and cost)")
        ax.set_xlim(left, right)
        _fid_floors(ax, floors)
        ax.set_xlabel(f"{name}, lower is cheaper")
        ax.set_ylabel("FID (lower is better)")
        ax.grid(alpha=0.3)
    axes[0].set_xticks(sorted(data["nfe"].unique()))
    fig.suptitle(f"{title}; large outlined marker: a run's best FID; dashed: Pareto front", fontsize=10)
    _save(fig, list(axes), path, _legend_columns(table))
    return _points(data, ["nfe", "seconds_per_1000", "images_per_s", "fid"])
