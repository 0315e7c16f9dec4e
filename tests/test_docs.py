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


def _post_trained_run(root, name: str, post_tokens: int):
    """A post-trained run dir as exit_models.sh leaves it: its record, its start run's, and its exit head's report."""
    from rrt.records import RunRecord

    up = root / "train" / f"up-{name}"
    RunRecord.create(up, status="complete", setting={"model": "smollm2_135m", "token_budget": 122880})
    setting = {"model": "smollm2_135m", "init": "stepwise", "loops": 3, "early_exit": "aggressive"}
    setting |= {"token_budget": post_tokens, "start_from": str(up / "model")}
    post = root / "train" / name
    perplexity = [{"exit_loop": b, "ppl": 300.0 - b} for b in (1, 2, 3)]
    RunRecord.create(post, status="complete", setting=setting, perplexity=perplexity)
    outcome = {"exit_frac_loop1": 0.7, "mean_exit_loop": 1.4, "agreement": 0.95}
    head = {"thresholds": [0.8], "fit": {"target_agreement": 0.95}}
    head["heldout"] = {"oracle": outcome, "learned": outcome, "auc": [0.9, 0.8], "tokens": 10}
    (post / "model").mkdir()
    (post / "model" / "exit_head.json").write_text(json.dumps(head))
    return post


def test_collecting_a_model_keeps_the_rows_and_files_of_models_collected_before(tmp_path, monkeypatch):
    """A model post-trained on another budget gets its own name; rows of models whose runs are gone stay."""
    from benchmarks import exit_models

    monkeypatch.setattr(exit_models, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(exit_models, "OUT", tmp_path / "results" / "exit_models")
    (tmp_path / "results").mkdir()
    exit_models.main([str(_post_trained_run(tmp_path / "a", "post", 65536))])
    exit_models.main([str(_post_trained_run(tmp_path / "b", "post", 131072))])
    exit_models.main([str(_post_trained_run(tmp_path / "c", "post", 131072))])  # the same model again: replaced
    rows = json.loads((tmp_path / "results" / "exit_models.json").read_text())["rows"]
    names = ["smollm2_135m_stepwise_b3_post65536", "smollm2_135m_stepwise_b3_post131072"]
    assert [r["name"] for r in rows] == names
    assert [r["post_tokens"] for r in rows] == [65536, 131072]
    assert sorted(p.name for p in (tmp_path / "results" / "exit_models").iterdir()) == sorted(names)
    copied = json.loads((tmp_path / "results" / "exit_models" / names[1] / "record.json").read_text())
    assert copied["setting"]["start_from"] == "train/up-post/model"  # relative to the runs root
