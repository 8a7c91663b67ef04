"""Published-number files parse, and every comparison names rows and runs that exist."""

import pandas as pd
from migbench.benchmarks.report import load_papers, paper_comparisons
from migbench.benchmarks.suite import load_suite

from migbench import registry


def test_papers_are_consistent() -> None:
    papers = load_papers()
    assert {p["file"] for p in papers} >= {"ka_mig.toml", "self_guidance.toml", "maskgit.toml", "emigm.toml"}
    for paper in papers:
        labels = [r["label"] for r in paper.get("rows", [])]
        assert len(labels) == len(set(labels)), paper["file"]
        for row in paper.get("rows", []):
            for method in row.get("methods", []):
                assert method in registry.METHODS or method in ("ka_mig", "self_guidance", "token_critic")
        for c in paper.get("comparisons", []):
            assert c["baseline"] in labels and c["method"] in labels
            assert c["our_suites"], c["claim"]
            for name in c["our_suites"]:
                labels_run = {point.label for point in load_suite(name).points}
                assert {c["our_baseline"], c["our_method"]} <= labels_run, (name, c["claim"])


def test_comparison_table_marks_missing_runs() -> None:
    best = pd.DataFrame([{"label": "maskgit", "fid": 10.0, "is_mean": 5.0}])
    text = paper_comparisons("fmnist_quick", best, load_papers())
    assert "not run yet" in text and "%" in text
