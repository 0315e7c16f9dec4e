"""Numbers in the docs are the results files' numbers: every marked table matches what benchmarks.docs renders."""

from __future__ import annotations

import json

import pytest

from benchmarks.docs import ROOT, TABLES, build, rendered


def test_docs_match_the_results_files():
    assert build(check=True) == [], "run `python -m benchmarks.docs` after re-running a benchmark"


@pytest.mark.parametrize("name", sorted(TABLES))
def test_a_changed_result_makes_its_doc_stale(name, tmp_path, monkeypatch):
    table = TABLES[name]
    data = json.loads(table.results_path().read_text())
    rows = data[table.rows_key]
    first = rows[0] if name != "anchor_hellaswag_first" else next(r for r in rows if r["task"] == "hellaswag")
    key = next(k for k, v in first.items() if isinstance(v, float))
    first[key] = first[key] * 7 + 1
    (tmp_path / table.results).write_text(json.dumps(data))
    monkeypatch.setattr("benchmarks.docs.DOC_RESULTS" if table.in_docs else "benchmarks.docs.RESULTS", tmp_path)
    text = (ROOT / table.doc).read_text()
    assert rendered(text, name, table) != text
