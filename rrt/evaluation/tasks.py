"""lm-eval task configs for the paper's 7 tasks, reading the local splits, rendered by the harness's own YAML.

Each generated YAML ``include``s the installed harness's built-in task file (its doc_to_text,
doc_to_choice, process_docs, metrics) and overrides only where the data comes from, so prompts are
exactly the harness's. The files are written at run time into the cache dir (they hold absolute
paths of this machine) and keep the harness's task names, so results read as ``piqa``, ``hellaswag``...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lm_eval
import yaml

from rrt.errors import UserError
from rrt.evaluation import benchmark_splits
from rrt.utils.atomic import atomic_write_text

GROUP = "paper7"
SPLIT_KEYS = {"train": "training_split", "validation": "validation_split", "test": "test_split"}


@dataclass(frozen=True)
class PaperTask:
    name: str  # harness task name
    builtin: str  # the harness's YAML for it, relative to lm_eval/tasks
    metric: str  # the metric the paper reports (rrt-paper.md §1.7)


PAPER_TASKS: dict[str, PaperTask] = {
    t.name: t
    for t in (
        PaperTask("lambada_openai", "lambada/lambada_openai.yaml", "acc"),
        PaperTask("hellaswag", "hellaswag/hellaswag.yaml", "acc_norm"),
        PaperTask("piqa", "piqa/piqa.yaml", "acc_norm"),
        PaperTask("winogrande", "winogrande/default.yaml", "acc"),
        PaperTask("arc_easy", "arc/arc_easy.yaml", "acc_norm"),
        PaperTask("arc_challenge", "arc/arc_challenge.yaml", "acc_norm"),
        PaperTask("openbookqa", "openbookqa/openbookqa.yaml", "acc_norm"),
    )
}


def builtin_yaml(task: str) -> Path:
    return Path(lm_eval.__file__).parent / "tasks" / PAPER_TASKS[task].builtin


def resolve_tasks(tasks: str | list[str]) -> list[str]:
    """``paper7`` or a list of task names -> validated list; unknown names fail with the known ones."""
    names = list(PAPER_TASKS) if tasks == GROUP else [tasks] if isinstance(tasks, str) else list(tasks)
    unknown = [name for name in names if name not in PAPER_TASKS]
    if unknown:
        raise UserError(f"unknown eval task(s) {unknown}; known: {GROUP} or any of {sorted(PAPER_TASKS)}")
    if not names:
        raise UserError(f"no eval tasks given; use {GROUP} or a list of {sorted(PAPER_TASKS)}")
    return names


def task_config(task: str) -> dict:
    """The override config of one task: include the built-in file, read our local jsonl splits."""
    splits = benchmark_splits.TASK_SPLITS[task]
    return {
        "include": str(builtin_yaml(task)),
        "task": task,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(benchmark_splits.materialize(task, split)) for split in splits}},
        **{key: (split if split in splits else None) for split, key in SPLIT_KEYS.items()},
    }


def task_dir(tasks: list[str]) -> Path:
    """Write the task YAMLs (and the ``paper7`` group) for ``tasks``; return the dir for ``include_path``."""
    directory = benchmark_splits.data_dir().parent.parent / "tasks" / f"lm-eval-{lm_eval.__version__}"
    for task in tasks:
        atomic_write_text(directory / f"{task}.yaml", yaml.safe_dump(task_config(task), sort_keys=False))
    if set(tasks) == set(PAPER_TASKS):
        atomic_write_text(directory / f"{GROUP}.yaml", yaml.safe_dump({"group": GROUP, "task": list(PAPER_TASKS)}))
    return directory
