"""Published-number files parse, and every comparison names rows and runs that exist."""

import pandas as pd
from migbench.benchmarks.report import load_papers, paper_comparisons, paper_rows_beside_ours
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
        for match in paper.get("reproductions", []):
            assert match["row"] in labels, match
            assert match["run"] in {point.label for point in load_suite(match["suite"]).points}, match


def test_paper_rows_beside_ours() -> None:
    best = pd.DataFrame([{"label": "valeoai 256", "fid": 7.1234, "is_mean": 201.56}])
    text = paper_rows_beside_ours("imagenet256_valeoai", best, load_papers())
    assert " 6.8 " in text and " 214 " in text and " 7.12 " in text and " 201.6 " in text
    assert "not run yet" in paper_rows_beside_ours("imagenet256_valeoai", best.iloc[:0], load_papers())


def test_comparison_table_marks_missing_runs() -> None:
    best = pd.DataFrame([{"label": "maskgit", "fid": 10.0, "is_mean": 5.0}])
    text = paper_comparisons("fmnist_quick", best, load_papers())
    assert "not run yet" in text and "%" in text
