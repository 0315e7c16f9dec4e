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


@pytest.mark.parametrize(
    ("low", "high", "expected"), [(1.6, 1.7, "met"), (1.2, 1.59, "not met"), (1.5, 1.65, "inconclusive")]
)
def test_a_target_is_met_only_when_every_round_reached_it(low, high, expected):
    from benchmarks.serving import verdict

    assert verdict({"median": (low + high) / 2, "min": low, "max": high}, 1.6) == expected


def test_full_model_name_follows_old_records_start_run(tmp_path):
    """Older post-trained records named the start run's path as their model: the name is the start run's."""
    from benchmarks.exit_models import full_model_name
    from rrt.records import RunRecord

    RunRecord.create(tmp_path / "up", status="complete", setting={"model": "smollm2_135m"})
    old = {"model": str(tmp_path / "up"), "start_from": str(tmp_path / "up" / "model")}
    assert full_model_name(old) == "smollm2_135m"
    assert full_model_name({"model": "gemma3_270m", "start_from": None}) == "gemma3_270m"
