"""harness.evaluate: tidy rows per task x exit loop, static early exit, errors before compute."""

from __future__ import annotations

import pytest

from rrt.evaluation.harness import evaluate
from tests.test_eval_lm import model, tokenizer  # noqa: F401  (shared module fixtures)

KEYS = ["task", "metric", "value", "stderr", "n", "num_fewshot", "exit_loop", "limit"]


def test_rows_per_task_and_exit_loop_with_the_paper_metric_and_avg(model, tokenizer):
    seen = []
    rows = evaluate(model, tokenizer, tasks=["winogrande", "piqa"], limit=4, exit_loops=[1, 2], progress=False,
                    on_rows=lambda partial: seen.append(len(partial)))
    assert [(r["task"], r["metric"], r["exit_loop"]) for r in rows] == [
        ("winogrande", "acc", 1), ("piqa", "acc_norm", 1), ("avg", "mean", 1),
        ("winogrande", "acc", 2), ("piqa", "acc_norm", 2), ("avg", "mean", 2)]
    assert all(list(r) == KEYS and r["limit"] == 4 and r["num_fewshot"] == 0 for r in rows)
    assert [r["n"] for r in rows] == [4, 4, 2, 4, 4, 2]
    assert rows[2]["value"] == pytest.approx((rows[0]["value"] + rows[1]["value"]) / 2)
    assert seen == [1, 2, 4, 5, 6]  # saved after every task, then once complete


def test_last_exit_loop_is_the_full_model(model, tokenizer):
    full = evaluate(model, tokenizer, tasks=["arc_easy"], limit=4, progress=False)
    assert evaluate(model, tokenizer, tasks=["arc_easy"], limit=4, exit_loops=[2], progress=False) == full
    assert full[0]["exit_loop"] == 2


def test_fewshot_examples_come_from_the_local_train_split(model, tokenizer):
    (row, _) = evaluate(model, tokenizer, tasks=["piqa"], limit=2, num_fewshot=2, progress=False)
    assert row["num_fewshot"] == 2


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(exit_loops=[1, 3]), ValueError, r"exit_loop=3 is outside 1..2"),
    (dict(tasks=["piqa", "mmlu"]), ValueError, r"unknown eval task\(s\) \['mmlu'\]"),
    (dict(tasks=["hellaswag"], num_fewshot=5), ValueError, r"no local train split .* \['hellaswag'\]"),
])
def test_bad_requests_fail_before_compute(model, tokenizer, kwargs, error, message):
    with pytest.raises(error, match=message):
        evaluate(model, tokenizer, **{"tasks": ["piqa"], **kwargs})
