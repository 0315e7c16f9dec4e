"""Evaluate an in-memory model from an ``eval`` config group: lm-eval accuracy and perplexity rows.

eval.py (``rrt.cli.evaluate``) and train.py (after training) both call :func:`run_evaluation`;
`check_eval_config` lets either fail on a bad eval config before any model is loaded.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from rrt.errors import UserError
from rrt.evaluation import benchmark_splits
from rrt.evaluation.harness import check_fewshot, check_subset, evaluate, exit_loop_list
from rrt.evaluation.perplexity import check_window, perplexity, read_jsonl_texts
from rrt.evaluation.tasks import resolve_tasks
from rrt.records import RunRecord
from rrt.utils.atomic import atomic_write_json

EVAL_KEY = ("task", "metric", "exit_loop", "num_fewshot", "limit", "subset")
PPL_KEY = ("dataset", "exit_loop", "context", "stride")
LOCAL_SPLITS = ("heldout",)  # perplexity datasets from the local corpus (rrt.data); others come from files


def _tasks(cfg_eval: DictConfig) -> list[str]:
    tasks = cfg_eval.get("tasks") or []
    tasks = tasks if isinstance(tasks, str) else list(tasks)
    return resolve_tasks(tasks) if tasks else []


def _ppl_sources(cfg_eval: DictConfig) -> dict[str, str | None]:
    """dataset name -> jsonl path (None for a local corpus split), validated before any compute."""
    ppl = cfg_eval.get("perplexity") or {}
    sources: dict[str, str | None] = {}
    for name in ppl.get("datasets") or []:
        if name not in LOCAL_SPLITS:
            raise UserError(
                f"unknown perplexity dataset '{name}': local ones are {LOCAL_SPLITS}; "
                "give other corpora as eval.perplexity.files={name: path.jsonl.zst}"
            )
        sources[name] = None
    for name, path in (ppl.get("files") or {}).items():
        if not Path(path).expanduser().is_file():
            raise FileNotFoundError(f"eval.perplexity.files.{name}: {path} does not exist")
        sources[name] = str(path)
    return sources


def check_exit_loops(exit_loops, loops: int | None) -> None:
    """``eval.exit_loops``: null, one loop or a list of loops (null in a list = the last), each in 1..loops."""
    values = list(exit_loops) if isinstance(exit_loops, (list, ListConfig)) else [exit_loops]
    for value in values:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (loops is not None and value > loops):
            bound = f"1..{loops}" if loops is not None else ">= 1"
            raise UserError(
                f"eval.exit_loops={exit_loops!r}: each exit loop must be an integer in {bound} "
                "(e.g. eval.exit_loops=[1,2]; null = the full model)"
            )


def check_eval_config(cfg_eval: DictConfig, loops: int | None = None) -> None:
    """Every configuration error, before a model is loaded (``loops``: the model's loop count, when known)."""
    limit = cfg_eval.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise UserError(f"eval.limit={limit!r} must be a number of docs > 0 (or null for the full split)")
    check_exit_loops(cfg_eval.get("exit_loops"), loops)
    tasks = _tasks(cfg_eval)
    check_fewshot(tasks, cfg_eval.get("num_fewshot"))
    check_subset(cfg_eval.get("subset", "first"))
    benchmark_splits.check_packages(tasks, need_train=bool(cfg_eval.get("num_fewshot")))
    if _ppl_sources(cfg_eval):
        ppl = cfg_eval.perplexity
        check_window(int(ppl.get("context_len", 1024)), int(ppl.get("stride", 512)))


def _documents(name: str, path: str | None, ppl: DictConfig) -> list[str]:
    if path is None:
        from rrt.data import load_documents

        documents = load_documents(name)
        return documents[: ppl.get("max_documents")] if ppl.get("max_documents") else documents
    return read_jsonl_texts(path, ppl.get("text_field", "text"), ppl.get("max_documents"))


def run_evaluation(
    cfg_eval: DictConfig, model, tokenizer, record: RunRecord | None = None, output: str | Path | None = None
) -> dict[str, list[dict]]:
    """Accuracy rows and perplexity rows for ``model``; saved into ``record`` / ``output`` as they come."""
    check_eval_config(cfg_eval)
    results: dict[str, list[dict]] = {"evals": [], "perplexity": []}
    exit_loops = cfg_eval.get("exit_loops")
    # fails on a loop the model does not have, before any compute
    loops = exit_loop_list(model, list(exit_loops) if isinstance(exit_loops, ListConfig) else exit_loops)
    started = time.perf_counter()

    def save(section: str, rows: list[dict], key: tuple[str, ...]) -> None:
        results[section] = rows
        if record is not None:
            record.replace_rows(section, rows, key=key)
        if output is not None:
            atomic_write_json(Path(output), results)

    tasks = _tasks(cfg_eval)
    if tasks:
        evaluate(
            model,
            tokenizer,
            tasks=tasks,
            limit=cfg_eval.get("limit"),
            subset=cfg_eval.get("subset", "first"),
            num_fewshot=cfg_eval.get("num_fewshot"),
            exit_loops=loops,
            batch_size=cfg_eval.get("batch_size", 16),
            progress=cfg_eval.get("progress", True),
            on_rows=lambda rows: save("evals", rows, EVAL_KEY),
        )
    ppl = cfg_eval.get("perplexity") or {}
    ppl_rows: list[dict] = []
    for name, path in _ppl_sources(cfg_eval).items():
        documents = _documents(name, path, ppl)
        for exit_loop in loops:
            scores = perplexity(
                model,
                tokenizer,
                documents,
                context_len=ppl.get("context_len", 1024),
                stride=ppl.get("stride", 512),
                exit_loop=exit_loop,
                batch_size=ppl.get("batch_size", 4),
                progress=cfg_eval.get("progress", True),
            )
            ppl_rows.append({"dataset": name, "exit_loop": exit_loop, **scores})
            save("perplexity", ppl_rows, PPL_KEY)
    if record is not None:
        record.update(timings={**record.data.get("timings", {}), "eval_s": time.perf_counter() - started})
    return results
