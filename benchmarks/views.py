"""The report's quality-diversity, quality-cost and per-class views of one provenance group.

:func:`views` draws the figures next to the report's Markdown and returns its sections:

- ``precision_recall.png``: precision against recall and density against coverage along each
  run's swept knob (:func:`migbench.benchmarks.plots.plot_precision_recall`);
- ``fid_cost.png``: FID against NFE per image and against seconds per 1,000 images, with the
  Pareto fronts (:func:`migbench.benchmarks.plots.plot_cost`);
- ``per_class.png``: class accuracy and FID per class at each run's best-FID point
  (:mod:`migbench.benchmarks.per_class`), for rows that carry them.

Rows recorded before density/coverage or per-class scores were computed are drawn without them,
and the section says so in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from migbench.backbones.fmnist.data import CLASS_NAMES
from migbench.benchmarks.per_class import best_points, bias_note, per_class_markdown, plot_per_class
from migbench.benchmarks.plots import cost_front, plot_cost, plot_precision_recall
from tabulate import tabulate


def older_rows_note(rows: list[dict[str, Any]], floors: dict[str, Any] | None) -> str:
    """One line naming the rows (and floors) recorded before density/coverage and per-class
    scores existed; empty when there are none. Rows without class accuracy (no labels, or an
    extractor without classes) never have per-class scores and are not counted."""
    no_density = sum("precision" in r["metrics"] and "density" not in r["metrics"] for r in rows)
    no_classes = sum("class_accuracy" in r["metrics"] and "per_class" not in r["metrics"] for r in rows)
    old_floors = bool(floors) and "density" not in floors["data"]["metrics"]
    if not (no_density or no_classes or old_floors):
        return ""
    if no_density and no_density == no_classes:
        parts = [f"{no_density} of {len(rows)} rows predate density/coverage and per-class scores"]
    else:
        parts = [f"{no_density} of {len(rows)} rows predate density/coverage"] if no_density else []
        parts += [f"{no_classes} of {len(rows)} rows predate per-class scores"] if no_classes else []
    parts += ["the quality floors predate density/coverage"] if old_floors else []
    return f"*{'; '.join(parts)}: they are drawn without them.*"


def measured_on(rows: list[dict[str, Any]]) -> str:
    """Devices and sampling precisions of the rows, e.g. ``cpu, bf16`` (rows made before the
    precision was recorded were sampled in bf16)."""
    # imported late, as the report does: the sweep module loads torch
    from migbench.benchmarks.sweep import row_precision

    devices = sorted({str(r["provenance"]["device"]) for r in rows})
    precisions = sorted({row_precision(r) for r in rows})
    return f"{' / '.join(devices)}, {' / '.join(precisions)}"


def _cost_front_table(points: pd.DataFrame) -> str:
    front = cost_front(points, "seconds_per_1000")
    body = [[r["label"], r["swept"], f"{r['fid']:.2f}", f"{r['nfe']:g}", f"{r['seconds_per_1000']:.1f}"]
            for _, r in front.iterrows()]
    return tabulate(body, headers=["run", "swept", "FID ↓", "NFE", "s / 1,000 images"], tablefmt="github",
                    disable_numparse=True)


def views(table: pd.DataFrame, rows: list[dict[str, Any]], floors: dict[str, Any] | None, out: Path,
          tag: str, title: str) -> list[str]:
    """Draw the views of one provenance group (``table``: its aggregate; ``rows``: its result rows)
    into ``out`` with file suffix ``tag``; return the Markdown sections."""
    note = older_rows_note(rows, floors)
    lines = [note, ""] if note else []
    lines += ["### Quality against diversity", "",
              "Precision (quality) against recall (diversity) along each run's swept knob and, for rows that "
              "carry them, density against coverage (Naeem et al., ICML 2020; prdc, on the features, reference "
              "subset and k = 3 of precision/recall), which outliers do not inflate as they do precision and "
              "recall. Error "
              "bars: 95% interval over seeds; grey markers: quality floors; large outlined marker: a run's "
              "best FID.", ""]
    plot_precision_recall(table, floors, out / f"precision_recall{tag}.png", f"{title}: quality vs diversity")
    lines += [f"![precision-recall and density-coverage](precision_recall{tag}.png)", ""]
    where = measured_on(rows)
    points = plot_cost(table, floors, out / f"fid_cost{tag}.png", f"{title}: FID vs cost", where)
    unrecorded = "; rows made before the precision was recorded were bf16" if any(
        "precision" not in r for r in rows) else ""
    lines += ["### FID against cost", "",
              "NFE per image, and seconds per 1,000 images (1000 / images/s of the fastest seed: sampling "
              f"only, measured on {where}{unrecorded}). Dashed: the Pareto front, points no other point beats "
              "on both FID and cost.", "",
              f"![FID against cost](fid_cost{tag}.png)", "", "Pareto front, FID against time:", "",
              _cost_front_table(points), ""]
    best = best_points(rows)
    if best:
        names = CLASS_NAMES if str(rows[0]["provenance"]["reference"]).startswith("fmnist") else None
        drawn = plot_per_class(best, out / f"per_class{tag}.png",
                               f"{title}: per-class scores at each run's best FID (mean over seeds)", names)
        lines += ["### Per-class scores", "", f"At each run's best-FID point, mean over seeds. {bias_note(best)}",
                  "", f"![per-class scores](per_class{tag}.png)", "", *per_class_markdown(best, drawn)]
    return lines
