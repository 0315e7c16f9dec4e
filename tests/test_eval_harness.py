"""harness.evaluate: tidy rows per task x exit loop, static early exit, errors before compute."""

from __future__ import annotations

import json

import pytest

from rrt.evaluation import benchmark_splits
from rrt.evaluation.harness import doc_selection, evaluate

KEYS = ["task", "metric", "value", "stderr", "n", "num_fewshot", "exit_loop", "limit", "subset"]


def test_rows_per_task_and_exit_loop_with_the_paper_metric_and_avg(model, tokenizer):
    seen = []
    rows = evaluate(
        model,
        tokenizer,
        tasks=["winogrande", "piqa"],
        limit=4,
        exit_loops=[1, 2],
        progress=False,
        on_rows=lambda partial: seen.append(len(partial)),
    )
    assert [(r["task"], r["metric"], r["exit_loop"]) for r in rows] == [
        ("winogrande", "acc", 1),
        ("piqa", "acc_norm", 1),
        ("avg", "mean", 1),
        ("winogrande", "acc", 2),
        ("piqa", "acc_norm", 2),
        ("avg", "mean", 2),
    ]
    assert all(list(r) == KEYS and r["limit"] == 4 and r["subset"] == "first" and r["num_fewshot"] == 0 for r in rows)
    assert [r["n"] for r in rows] == [4, 4, 2, 4, 4, 2]
    assert rows[2]["value"] == pytest.approx((rows[0]["value"] + rows[1]["value"]) / 2)
    assert seen == [1, 2, 4, 5, 6]  # saved after every task, then once complete


def test_last_exit_loop_is_the_full_model(model, tokenizer):
    full = evaluate(model, tokenizer, tasks=["arc_easy"], limit=4, progress=False)
    assert evaluate(model, tokenizer, tasks=["arc_easy"], limit=4, exit_loops=[2], progress=False) == full
    assert full[0]["exit_loop"] == 2


def test_spread_subset_is_evenly_spaced_over_the_split():
    size = benchmark_splits.split_size("hellaswag")
    assert size == 10042
    assert doc_selection("hellaswag", 4, "first") == {"limit": 4}
    assert doc_selection("hellaswag", None, "spread") == {"limit": None}
    assert doc_selection("hellaswag", 4, "spread") == {"limit": None, "samples": {"hellaswag": [0, 2510, 5021, 7531]}}
    assert len(doc_selection("openbookqa", 0.5, "spread")["samples"]["openbookqa"]) == 250  # a fraction, as lm-eval
    assert doc_selection("openbookqa", 5000, "spread")["samples"]["openbookqa"] == list(range(500))
    picked = doc_selection("hellaswag", 1000, "spread")["samples"]["hellaswag"]
    path = benchmark_splits.materialize("hellaswag", "validation")
    sources = [json.loads(line)["source_id"].split("~")[0] for line in path.read_text().splitlines()]
    assert {sources[i] for i in range(1000)} == {"activitynet"}  # why "first" is not representative here
    wikihow = sum(sources[i] == "wikihow" for i in picked) / len(picked)
    assert wikihow == pytest.approx(sources.count("wikihow") / size, abs=0.01)


def test_spread_rows_say_which_docs_they_scored(model, tokenizer):
    (row, avg) = evaluate(model, tokenizer, tasks=["winogrande"], limit=3, subset="spread", progress=False)
    assert (row["n"], row["limit"], row["subset"], avg["subset"]) == (3, 3, "spread", "spread")


def test_fewshot_examples_come_from_the_local_train_split(model, tokenizer):
    (row, _) = evaluate(model, tokenizer, tasks=["piqa"], limit=2, num_fewshot=2, progress=False)
    assert row["num_fewshot"] == 2


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(exit_loops=[1, 3]), ValueError, r"exit_loop=3 is outside 1..2"),
        (dict(tasks=["piqa", "mmlu"]), ValueError, r"unknown eval task\(s\) \['mmlu'\]"),
        (dict(tasks=["hellaswag"], num_fewshot=5), ValueError, r"no local train split .* \['hellaswag'\]"),
        (dict(limit=5, subset="random"), ValueError, r"eval.subset='random': use one of \('first', 'spread'\)"),
    ],
)
def test_bad_requests_fail_before_compute(model, tokenizer, kwargs, error, message):
    with pytest.raises(error, match=message):
        evaluate(model, tokenizer, **{"tasks": ["piqa"], **kwargs})
