"""`migbench report SUITE`: Markdown tables, figures (:mod:`.plots`, :mod:`.views`) and grids, from
results/ only. SUITE is what `migbench sweep` takes: a suite name or the path of a suite file.

The report is built in a folder beside ``reports/<suite>`` and swapped in whole
(:func:`~migbench.outputs.replaced_folder`): a killed report leaves the previous one as it was.
Rows sharing a run hash (a results file written before sweeps locked their folder) count once,
the first; the report says how many it left out.

Rows are grouped by provenance (evaluator, extractor weights, reference content, N): numbers of
different groups are never put in one table or plot. Over seeds, every metric is shown as the
mean with a 95% Student-t interval, drawn as error bars.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from migbench.benchmarks.plots import non_dominated, plot_fid_is
from migbench.benchmarks.results import duplicate_rows, flatten, read_rows, results_dir
from migbench.benchmarks.views import views
from scipy import stats
from tabulate import tabulate

from migbench.outputs import replaced_folder, write_text_atomic
from migbench.paths import repo_root

METRICS = ("fid", "is_mean", "kid_mean", "precision", "recall", "density", "coverage", "class_accuracy")
HEADERS = {"fid": "FID ↓", "is_mean": "IS ↑", "kid_mean": "KID×10³ ↓", "precision": "precision ↑",
           "recall": "recall ↑", "density": "density", "coverage": "coverage ↑", "class_accuracy": "class acc ↑"}


def interval(values: pd.Series) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval (0 for a single value)."""
    values = values.dropna()
    mean = float(values.mean())
    if len(values) < 2:
        return mean, 0.0
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, half


def aggregate(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One record per (label, swept values): metric means, 95% half-widths, costs (images/s: the
    fastest seed), seeds."""
    flat = pd.DataFrame([flatten(r) for r in rows])
    swept_cols = sorted({k for r in rows for k in r["swept"]})
    for col in swept_cols:
        flat[col] = flat[col].astype(object).where(flat[col].notna(), "")
    out = []
    for key, group in flat.groupby(["label", *swept_cols], sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        record: dict[str, Any] = dict(zip(["label", *swept_cols], key, strict=True))
        swept = {c: record[c] for c in swept_cols if record[c] != ""}
        record["swept"] = ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in swept.items()) or "-"
        record["swept_value"] = next(iter(swept.values()), None) if len(swept) == 1 else record["swept"]
        for metric in METRICS:
            if metric in group:
                record[metric], record[metric + "_ci"] = interval(group[metric])
        for col in ("nfe", "extra_params_online", "extra_params_precomputed"):
            record[col] = float(group[col].mean())
        # the seeds repeat one config: the fastest is the least disturbed by other load (timeit's rule)
        record["images_per_s"] = float(group["images_per_s"].max())
        record["seeds"] = int(group["seed"].nunique())
        record["run_hash"] = group["run_hash"].iloc[0]
        out.append(record)
    return pd.DataFrame(out)


def _fmt(record: pd.Series, metric: str) -> str:
    if metric not in record or pd.isna(record[metric]):
        return "-"
    scale = 1000.0 if metric == "kid_mean" else 1.0
    digits = 2 if metric in ("fid", "is_mean", "kid_mean") else 3
    text = f"{record[metric] * scale:.{digits}f}"
    if record.get(metric + "_ci", 0.0):
        text += f" ± {record[metric + '_ci'] * scale:.{digits}f}"
    return text


def metrics_table(table: pd.DataFrame) -> str:
    headers = ["run", "swept", *[HEADERS[m] for m in METRICS if m in table], "NFE", "images/s",
               "extra params (online / precomputed)", "seeds"]
    body = []
    for _, r in table.iterrows():
        body.append([r["label"], r["swept"], *[_fmt(r, m) for m in METRICS if m in table],
                     f"{r['nfe']:g}", f"{r['images_per_s']:.0f}",
                     f"{int(r['extra_params_online']):,} / {int(r['extra_params_precomputed']):,}",
                     r["seeds"]])
    return tabulate(body, headers=headers, tablefmt="github")


def cost_table(table: pd.DataFrame) -> str:
    """Per run: NFE per image, images/s and time per image relative to the first run (the
    suite's baseline), extra parameters online / precomputed (KA-MIG's efficiency table)."""
    runs = table.groupby("label", sort=False).agg(
        nfe_min=("nfe", "min"), nfe_max=("nfe", "max"), images_per_s=("images_per_s", "mean"),
        online=("extra_params_online", "max"), precomputed=("extra_params_precomputed", "max"))
    base = runs["images_per_s"].iloc[0]
    body = []
    for label, r in runs.iterrows():
        nfe = f"{r['nfe_min']:g}" if r["nfe_min"] == r["nfe_max"] else f"{r['nfe_min']:g}-{r['nfe_max']:g}"
        body.append([label, nfe, f"{r['images_per_s']:.1f}", f"{base / r['images_per_s']:.2f}x",
                     f"{int(r['online']):,}", f"{int(r['precomputed']):,}"])
    return tabulate(body, headers=["run", "NFE / image", "images/s", f"time / image vs {runs.index[0]}",
                                   "extra params online", "extra params precomputed"], tablefmt="github",
                    disable_numparse=True)


def best_per_run(table: pd.DataFrame) -> pd.DataFrame:
    return table.loc[table.groupby("label", sort=False)["fid"].idxmin()]


def pareto_front(table: pd.DataFrame) -> pd.DataFrame:
    """Points no other point beats on both FID (lower) and IS (higher)."""
    return non_dominated(table, "fid", higher="is_mean").sort_values("fid")


def _floors_table(floors: dict[str, Any]) -> str:
    body = []
    for kind in ("data", "tokenizer"):
        m = floors[kind]["metrics"]
        body.append([f"{kind} floor", f"{m['fid']:.2f}", f"{m['is_mean']:.2f}", f"{m['kid_mean'] * 1000:.2f}",
                     f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m.get('class_accuracy', float('nan')):.3f}"])
    return tabulate(body, headers=["", "FID", "IS", "KID×10³", "precision", "recall", "class acc"],
                    tablefmt="github")


PAPERS_DIR = Path(__file__).resolve().parent / "papers"


def load_papers(folder: Path = PAPERS_DIR) -> list[dict[str, Any]]:
    """Every ``benchmarks/papers/*.toml`` (published numbers with their protocol)."""
    from migbench.benchmarks.suite import tomllib

    return [{"file": p.name, **tomllib.loads(p.read_text(encoding="utf-8"))} for p in sorted(folder.glob("*.toml"))]


def _change(base: float, new: float) -> str:
    return f"{(new - base) / base * 100:+.1f}%" if base else "-"


def paper_comparisons(suite: str, best: pd.DataFrame, papers: list[dict[str, Any]]) -> str:
    """Each paper's claimed relative change beside the change measured here (best FID per run)."""
    body = []
    measured = {r["label"]: r for _, r in best.iterrows()}
    for paper in papers:
        rows = {r["label"]: r for r in paper.get("rows", [])}
        for c in paper.get("comparisons", []):
            if suite not in c.get("our_suites", []):
                continue
            metric = c.get("metric", "fid")
            key = "is_mean" if metric == "is" else metric
            base, new = rows[c["baseline"]], rows[c["method"]]
            claimed = _change(base[metric], new[metric]) if metric in base and metric in new else "-"
            if c["our_baseline"] in measured and c["our_method"] in measured:
                ours = _change(measured[c["our_baseline"]][key], measured[c["our_method"]][key])
            else:
                ours = "not run yet"
            body.append([paper["file"], c["claim"], f"{c['baseline']} → {c['method']}", metric.upper(),
                         claimed, f"{c['our_baseline']} → {c['our_method']}", ours])
    if not body:
        return ""
    return tabulate(body, headers=["paper", "claim", "paper rows", "metric", "paper change",
                                   "our runs", "our change"], tablefmt="github")


def paper_rows_beside_ours(suite: str, best: pd.DataFrame, papers: list[dict[str, Any]]) -> str:
    """Each paper row that a run of ``suite`` reproduces (a paper file's ``[[reproductions]]``:
    ``row``, ``suite``, ``run``) beside that run's best-FID point: the same model and settings,
    so the values themselves compare (within the protocol differences the paper file notes)."""
    measured = {re.sub(r" \[(bf16|fp16|fp32)\]$", "", r["label"]): r for _, r in best.iterrows()}
    body = []
    for paper in papers:
        rows = {r["label"]: r for r in paper.get("rows", [])}
        for match in paper.get("reproductions", []):
            if match["suite"] != suite:
                continue
            row, ours = rows[match["row"]], measured.get(match["run"])
            body.append([paper["file"], match["row"], row.get("fid", "-"), row.get("is", "-"), match["run"],
                         f"{ours['fid']:.2f}" if ours is not None else "not run yet",
                         f"{ours['is_mean']:.1f}" if ours is not None else "-"])
    if not body:
        return ""
    return tabulate(body, headers=["paper", "paper row", "paper FID", "paper IS", "our run", "our FID", "our IS"],
                    tablefmt="github")


README_MARK = "<!-- {suite}:begin -->", "<!-- {suite}:end -->"


def suite_name(suite: str) -> str:
    """The name ``migbench sweep`` files the results of ``suite`` under: the ``name`` of a suite
    given by the path of its file (default: the file's stem), else ``suite`` itself."""
    from migbench.benchmarks.suite import load_suite

    path = Path(suite)
    return load_suite(suite).name if path.suffix == ".toml" and path.is_file() else suite


def update_readme(suite: str, readme: Path, results_root: Path | None = None) -> None:
    """Replace the block between ``<!-- SUITE:begin -->`` and ``<!-- SUITE:end -->`` in ``readme``
    with the suite's best-FID table, floors and FID-IS plot (rendered by :func:`report`)."""
    rows, _ = current_rows(suite, results_root)
    suite = suite_name(suite)
    if not rows:
        raise FileNotFoundError(f"no current results for {suite}")
    latest = max(rows, key=lambda r: r["created"])["provenance_key"]  # never mix provenance groups
    rows = [r for r in rows if r["provenance_key"] == latest]
    begin, end = (m.format(suite=suite) for m in README_MARK)
    text = readme.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        raise ValueError(f"{readme} has no {begin} ... {end} block")
    p = rows[0]["provenance"]
    floors_path = results_dir(suite, results_root) / "floors.json"
    block = [begin, "", f"Best FID per run of `{suite}` (N = {p['n']} per point against `{p['reference']}`, "
             f"{p['extractor']} features; full report: [reports/{suite}](reports/{suite}/README.md)):", "",
             metrics_table(best_per_run(aggregate(rows))), ""]
    if floors_path.exists():
        block += [_floors_table(json.loads(floors_path.read_text())), ""]
    block += [f"![FID-IS curves of {suite}](reports/{suite}/fid_is.png)", "", end]
    start, stop = text.index(begin), text.index(end) + len(end)
    write_text_atomic(readme, text[:start] + "\n".join(block) + text[stop:])


def current_rows(suite: str, results_root: Path | None = None) -> tuple[list[dict[str, Any]], int]:
    """Rows of the suite as defined now, in the suite's order (stale rows of older definitions
    or weights are left out), and how many were left out. A suite with no definition file keeps
    every row. Where the rows hold more than one precision, each label gets its precision.
    ``suite``: a name or a suite file's path (:func:`suite_name`); rows sharing a run hash count
    once (:func:`~migbench.benchmarks.results.read_rows`)."""
    from migbench.benchmarks.sweep import current_hashes, row_precision

    rows = read_rows(results_dir(suite_name(suite), results_root))
    wanted = current_hashes(suite)
    kept = rows
    if wanted is not None:
        order = {h: i for i, h in enumerate(wanted)}
        kept = sorted((r for r in rows if r["run_hash"] in order), key=lambda r: order[r["run_hash"]])
    if len({row_precision(r) for r in kept}) > 1:  # samples of two precisions are never seeds of one point
        kept = [r if row_precision(r) in r["label"].split() else {**r, "label": f"{r['label']} [{row_precision(r)}]"}
                for r in kept]
    return kept, len(rows) - len(kept)


def report(suite: str, results_root: Path | None = None, reports_root: Path | None = None) -> Path:
    """Render ``reports/<suite>/`` from ``results/<suite>/`` (``suite``: a name or a suite file's
    path); returns the Markdown path."""
    name = suite_name(suite)
    folder = results_dir(name, results_root)
    rows, stale = current_rows(suite, results_root)
    if not rows:
        from migbench.benchmarks.suite import SuiteError, suite_path

        try:
            suite_path(suite)
        except SuiteError as err:
            raise SuiteError(f"{err}; and no results in {folder}") from None
        raise FileNotFoundError(f"no current results in {folder}; run `migbench sweep {suite}` first")
    duplicates = duplicate_rows(folder)
    if duplicates:
        print(f"report {name}: {duplicates} duplicate row(s) in {folder / 'results.jsonl'} repeat the run hash of "
              "an earlier row; each run counts once (the first row)", file=sys.stderr)
    target = (reports_root or repo_root() / "reports") / name
    with replaced_folder(target) as out:
        _render(name, folder, out, rows, stale, duplicates)
    return target / "README.md"


def _render(suite: str, folder: Path, out: Path, rows: list[dict[str, Any]], stale: int, duplicates: int) -> None:
    """Write the report of ``rows`` (from ``folder``) into the empty folder ``out``."""
    (out / "grids").mkdir()
    floors_path = folder / "floors.json"
    floors = json.loads(floors_path.read_text()) if floors_path.exists() else None
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["provenance_key"], []).append(row)
    lines = [f"# {suite}", "", f"Generated by `migbench report {suite}` from `results/{suite}/` "
             f"({len(rows)} rows{f'; {stale} stale rows of an older suite definition or older weights left out' if stale else ''}"
             f"{f'; {duplicates} duplicate rows repeating an earlier run hash left out (the first counts)' if duplicates else ''}). "
             "Metrics: mean ± 95% interval over seeds where a suite has several.", ""]
    for key, group_rows in groups.items():
        p = group_rows[0]["provenance"]
        table = aggregate(group_rows)
        tag = "" if len(groups) == 1 else f"_{key}"
        floors_here = floors if floors and floors["data"]["provenance"]["reference_sha256"] == p["reference_sha256"] \
            and floors["data"]["provenance"]["n"] == p["n"] else None
        lines += [f"## Provenance group `{key}`", "",
                  f"N = {p['n']} samples per point against `{p['reference']}` (sha256 {p['reference_sha256'][:12]}, "
                  f"{p['reference_n']} images); {p['evaluator']} {p['evaluator_version']}, extractor "
                  f"`{p['extractor']}` (FID/KID/PR layer `{p['feature_layer']}`, IS layer `{p['logits_layer']}`, "
                  f"weights {p['extractor_weights'][:12]}); torch {p['torch']}, git {p['git_revision'][:12]}, "
                  f"{p['device']}, {p['processes']} process(es).", ""]
        if floors_here:
            lines += ["### Quality floors", "", _floors_table(floors_here), "",
                      "Data floor: real test images at the same N; tokenizer floor: their VQ reconstructions.", ""]
        plot_name = f"fid_is{tag}.png"
        plot_fid_is(table, floors_here, out / plot_name, f"{suite}: FID vs IS (N={p['n']})")
        best = best_per_run(table)
        lines += ["### Best FID per run", "", metrics_table(best), "", f"![FID-IS curves]({plot_name})", "",
                  "### Pareto front (FID ↓, IS ↑)", "", metrics_table(pareto_front(table)), "",
                  *views(table, group_rows, floors_here, out, tag, f"{suite} (N={p['n']})"),
                  "### Cost", "", "Mean over each run's points (images/s: the fastest seed of each point); "
                  "sampling only (evaluation excluded), "
                  f"{p['device']}, batch of the suite. Online parameters run at sampling time; precomputed "
                  "ones were folded into constants before sampling.", "", cost_table(table), "",
                  "### All points", "", metrics_table(table), ""]
        papers = load_papers()
        reproductions = paper_rows_beside_ours(suite, best, papers)
        if reproductions:
            lines += ["### Paper rows beside ours", "",
                      "The paper's numbers for the model and settings each run reproduces, beside our best-FID "
                      "point of that run (N and the protocol as in the provenance above; the paper's protocol is "
                      "in its file under `benchmarks/papers/`).", "", reproductions, ""]
        comparisons = paper_comparisons(suite, best, papers)
        if comparisons:
            lines += ["### Papers' claims beside our measurements", "",
                      "Relative change of the metric from the paper's baseline row to its method row, and from "
                      "our baseline run to our method run (best FID point of each). Different data, models and "
                      "N: compare directions and rough sizes, not values.", "", comparisons, ""]
        lines += ["### Samples at each run's best FID", ""]
        for _, r in best.iterrows():
            grid = folder / "grids" / f"{r['run_hash']}.png"
            if grid.exists():
                name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{r['label']}{tag}") + ".png"  # a safe link target
                shutil.copy(grid, out / "grids" / name)
                lines += [f"**{r['label']}** ({r['swept']}, FID {r['fid']:.2f})", "",
                          f"![{r['label']}](grids/{name})", ""]
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
