"""The paper's accuracy protocol: lm-eval on the local splits, one pass per static exit loop, tidy rows.

Rows follow the run record's ``evals`` section: one per (task, exit loop) with only the metric the paper
reports for that task (acc for LAMBADA and WinoGrande, acc_norm for the rest), plus an ``avg`` row per
exit loop (the paper's Avg: unweighted mean over the tasks evaluated).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from lm_eval import simple_evaluate  # offline: rrt/__init__.py set the HF variables before this import
from lm_eval.tasks import TaskManager
from torch import nn

from rrt.errors import UserError
from rrt.evaluation import benchmark_splits
from rrt.evaluation.lm import RecursiveLM
from rrt.evaluation.tasks import PAPER_TASKS, resolve_tasks, task_dir
from rrt.recursive.model import RecursiveModel

BOOTSTRAP_ITERS = 1000  # only LAMBADA's (unreported) perplexity is bootstrapped; acc stderrs are closed-form
SUBSETS = ("first", "spread")


def task_manager(tasks: Sequence[str]) -> TaskManager:
    """A TaskManager that knows only our local mirrors of ``tasks`` (built-ins would need the hub)."""
    return TaskManager(include_path=str(task_dir(list(tasks))), include_defaults=False)


def check_fewshot(tasks: Sequence[str], num_fewshot: int | None) -> None:
    """Few-shot examples must come from the split the harness samples them from; refuse where it is not local."""
    if not num_fewshot:
        return
    missing = [t for t in tasks if "train" not in benchmark_splits.TASK_SPLITS[t] and t not in ("lambada_openai",)]
    if missing:
        raise UserError(
            f"num_fewshot={num_fewshot}: no local train split (few-shot pool) for {missing}; "
            "evaluate them with num_fewshot=null (the harness default, 0) or drop them from eval.tasks"
        )


def check_subset(subset: str) -> None:
    if subset not in SUBSETS:
        raise UserError(f"eval.subset={subset!r}: use one of {SUBSETS} (which docs eval.limit keeps)")


def doc_selection(task: str, limit: int | float | None, subset: str = "first") -> dict[str, Any]:
    """``simple_evaluate``'s doc arguments for ``limit`` docs of ``task``: the first ones (lm-eval's ``--limit``)
    or, with ``subset="spread"``, evenly spaced over the whole split. Splits can be ordered by source:
    HellaSwag's validation split lists every ActivityNet doc before the WikiHow ones (68% of it), so its
    first 1000 docs are all ActivityNet."""
    check_subset(subset)
    if limit is None or subset == "first":
        return {"limit": limit}
    size = benchmark_splits.split_size(task)
    count = min(size, math.ceil(size * limit) if limit < 1 else int(limit))  # a fraction as lm-eval reads it
    return {"limit": None, "samples": {task: [i * size // count for i in range(count)]}}


def exit_loop_list(model: nn.Module, exit_loops: Sequence[int | None] | int | None) -> list[int]:
    """Requested exit loops as ints (None = the last loop = the full model), deduplicated, in order, validated."""
    recursive = RecursiveModel(model)
    requested = exit_loops if isinstance(exit_loops, Sequence) else [exit_loops]
    chosen = list(dict.fromkeys(recursive.loops if b is None else int(b) for b in requested or [None]))
    for exit_loop in chosen:
        recursive.exit_depth(exit_loop)  # raises with the model's loop count
    return chosen


def tidy_row(
    results: dict[str, Any], task: str, exit_loop: int, limit: int | float | None, subset: str | None = None
) -> dict:
    """The paper's metric of ``task`` from a ``simple_evaluate`` result."""
    metric = PAPER_TASKS[task].metric
    scores = results["results"][task]
    stderr = scores.get(f"{metric}_stderr,none")
    return {
        "task": task,
        "metric": metric,
        "value": float(scores[f"{metric},none"]),
        "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
        "n": int(results["n-samples"][task]["effective"]),
        "num_fewshot": int(results["n-shot"][task]),
        "exit_loop": exit_loop,
        "limit": limit,
        "subset": subset if limit is not None else None,
    }


def average_row(rows: list[dict]) -> dict:
    """The paper's Avg over ``rows``; stderr assumes independent task estimates."""
    errors = [r["stderr"] for r in rows]
    stderr = math.sqrt(sum(e * e for e in errors)) / len(rows) if None not in errors else None
    return {
        "task": "avg",
        "metric": "mean",
        "value": sum(r["value"] for r in rows) / len(rows),
        "stderr": stderr,
        "n": len(rows),
        "num_fewshot": rows[0]["num_fewshot"],
        "exit_loop": rows[0]["exit_loop"],
        "limit": rows[0]["limit"],
        "subset": rows[0]["subset"],
    }


def evaluate(
    model: nn.Module,
    tokenizer,
    tasks: str | Sequence[str] = "paper7",
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    exit_loops: Sequence[int | None] | int | None = None,
    batch_size: int = 16,
    progress: bool = True,
    subset: str = "first",
    on_rows: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Accuracy rows for every task x exit loop (see module doc). All inputs are checked before any compute.

    Tasks run one at a time and ``on_rows(rows so far)`` is called after each, so a long run can save
    its partial results.
    """
    names = resolve_tasks(tasks if isinstance(tasks, str) else list(tasks))
    check_fewshot(names, num_fewshot)
    benchmark_splits.check_packages(names, need_train=bool(num_fewshot))
    selections = {task: doc_selection(task, limit, subset) for task in names}  # validates subset; once per task
    lms = {
        b: RecursiveLM(model, tokenizer, exit_loop=b, batch_size=batch_size, progress=progress)
        for b in exit_loop_list(model, exit_loops)
    }
    rows: list[dict] = []
    manager = task_manager(names)
    for exit_loop, lm in lms.items():
        loop_rows = []
        for task in names:
            results = simple_evaluate(
                model=lm,
                tasks=[task],
                num_fewshot=num_fewshot,
                **selections[task],
                task_manager=manager,
                log_samples=False,
                bootstrap_iters=BOOTSTRAP_ITERS,
            )
            loop_rows.append(tidy_row(results, task, exit_loop, limit, subset))
            if on_rows:
                on_rows(rows + loop_rows)
        rows += loop_rows + [average_row(loop_rows)]
    if on_rows:
        on_rows(rows)
    return rows
