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
            load_suite(c["our_suite"])


def test_comparison_table_marks_missing_runs() -> None:
    best = pd.DataFrame([{"label": "maskgit", "fid": 10.0, "is_mean": 5.0}])
    text = paper_comparisons("fmnist_quick", best, load_papers())
    assert "not run yet" in text and "%" in text
