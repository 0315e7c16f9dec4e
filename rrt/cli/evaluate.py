"""``python eval.py run=<run dir> | checkpoint=<dir> | model=<embedded model>``: lm-eval accuracy + perplexity.

``run_evaluation`` is the core; train.py calls it after training with its in-memory model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf

from rrt.evaluation import data
from rrt.evaluation.harness import check_fewshot, evaluate, exit_loop_list
from rrt.evaluation.perplexity import check_window, perplexity, read_jsonl_texts
from rrt.evaluation.tasks import resolve_tasks
from rrt.records import RECORD_NAME, RunRecord
from rrt.utils.atomic import atomic_write_text

EVAL_KEY = ("task", "metric", "exit_loop", "num_fewshot", "limit")
PPL_KEY = ("dataset", "exit_loop", "context", "stride")
LOCAL_SPLITS = ("heldout",)  # perplexity datasets from the local corpus (rrt.data); others come from files
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


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
            raise ValueError(f"unknown perplexity dataset '{name}': local ones are {LOCAL_SPLITS}; "
                             "give other corpora as eval.perplexity.files={name: path.jsonl.zst}")
        sources[name] = None
    for name, path in (ppl.get("files") or {}).items():
        if not Path(path).expanduser().is_file():
            raise FileNotFoundError(f"eval.perplexity.files.{name}: {path} does not exist")
        sources[name] = str(path)
    return sources


def validate(cfg_eval: DictConfig) -> None:
    """Every configuration error, before a model is loaded."""
    tasks = _tasks(cfg_eval)
    check_fewshot(tasks, cfg_eval.get("num_fewshot"))
    data.check_packages(tasks, need_train=bool(cfg_eval.get("num_fewshot")))
    if _ppl_sources(cfg_eval):
        ppl = cfg_eval.perplexity
        check_window(int(ppl.get("context_len", 1024)), int(ppl.get("stride", 512)))


def _documents(name: str, path: str | None, ppl: DictConfig) -> list[str]:
    if path is None:
        from rrt.data import load_documents

        documents = load_documents(name)
        return documents[: ppl.get("max_documents")] if ppl.get("max_documents") else documents
    return read_jsonl_texts(path, ppl.get("text_field", "text"), ppl.get("max_documents"))


def run_evaluation(cfg_eval: DictConfig, model, tokenizer, record: RunRecord | None = None,
                   output: str | Path | None = None) -> dict[str, list[dict]]:
    """Accuracy rows and perplexity rows for ``model``; saved into ``record`` / ``output`` as they come."""
    validate(cfg_eval)
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
            atomic_write_text(Path(output), json.dumps(results, indent=1))

    tasks = _tasks(cfg_eval)
    if tasks:
        evaluate(model, tokenizer, tasks=tasks, limit=cfg_eval.get("limit"), num_fewshot=cfg_eval.get("num_fewshot"),
                 exit_loops=loops, batch_size=cfg_eval.get("batch_size", 16), progress=cfg_eval.get("progress", True),
                 on_rows=lambda rows: save("evals", rows, EVAL_KEY))
    ppl = cfg_eval.get("perplexity") or {}
    ppl_rows: list[dict] = []
    for name, path in _ppl_sources(cfg_eval).items():
        documents = _documents(name, path, ppl)
        for exit_loop in loops:
            scores = perplexity(model, tokenizer, documents, context_len=ppl.get("context_len", 1024),
                                stride=ppl.get("stride", 512), exit_loop=exit_loop,
                                batch_size=ppl.get("batch_size", 4), progress=cfg_eval.get("progress", True))
            ppl_rows.append({"dataset": name, "exit_loop": exit_loop, **scores})
            save("perplexity", ppl_rows, PPL_KEY)
    if record is not None:
        record.update(timings={**record.data.get("timings", {}), "eval_s": time.perf_counter() - started})
    return results


def format_results(results: dict[str, list[dict]]) -> str:
    """Accuracy as task x exit loop (value ± stderr), then perplexity, as plain-text tables."""
    parts = []
    if results["evals"]:
        frame = pd.DataFrame(results["evals"])
        frame["score"] = [f"{v:.4f} ± {s:.4f}" if s is not None else f"{v:.4f}"
                          for v, s in zip(frame.value, frame.stderr)]
        table = frame.pivot_table(index=["task", "metric"], columns="exit_loop", values="score", aggfunc="first",
                                  sort=False)
        parts.append(table.rename(columns=lambda b: f"exit loop {b}").to_string())
    if results["perplexity"]:
        parts.append(pd.DataFrame(results["perplexity"]).to_string(index=False))
    return "\n\n".join(parts)


def load_target(cfg: DictConfig) -> tuple[Any, Any, RunRecord | None]:
    """(model, tokenizer, record or None) for ``run=``, ``checkpoint=`` or ``model=``; clear errors for bad paths."""
    from transformers import AutoTokenizer

    from rrt import assets
    from rrt.recursive.io import is_saved_model_dir, load_converted

    record, tokenizer_name = None, cfg.get("tokenizer")
    if cfg.get("run"):
        run = Path(cfg.run).expanduser()
        if not (run / RECORD_NAME).is_file() or not is_saved_model_dir(run / "model"):
            raise FileNotFoundError(f"run={run} is not a finished run dir: expected {RECORD_NAME} and a saved model in "
                                    "model/ (train.py writes both); for a model dir alone use checkpoint=<dir>")
        record, model_dir = RunRecord.load(run), run / "model"
        tokenizer_name = tokenizer_name or OmegaConf.select(OmegaConf.create(record.data.get("config", {})),
                                                            "model.tokenizer")
    elif cfg.get("checkpoint"):
        model_dir = Path(cfg.checkpoint).expanduser()
        if not model_dir.is_dir():
            raise FileNotFoundError(f"checkpoint={model_dir} is not a directory")
        if not is_saved_model_dir(model_dir):  # a plain HF checkpoint
            return assets.load_pretrained(str(model_dir)).to(cfg.device), assets.load_tokenizer(
                tokenizer_name or str(model_dir)), None
    elif cfg.get("model"):
        if cfg.model.get("source", "pretrained") != "pretrained":
            raise ValueError(f"model={cfg.model.name} has no pretrained weights (source={cfg.model.source}); "
                             "evaluate a trained run with run=<dir> instead")
        return (assets.load_pretrained(cfg.model.name).to(cfg.device),
                assets.load_tokenizer(tokenizer_name or cfg.model.tokenizer), None)
    else:
        raise ValueError("nothing to evaluate: give run=<run dir>, checkpoint=<saved model or HF checkpoint dir> "
                         "or model=<embedded model, e.g. gemma3_270m>")
    model = load_converted(model_dir, device=cfg.device)
    if tokenizer_name:
        return model, assets.load_tokenizer(tokenizer_name), record
    if not (model_dir / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no tokenizer; pass tokenizer=<embedded model name or dir>")
    return model, AutoTokenizer.from_pretrained(model_dir), record


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    validate(cfg.eval)
    model, tokenizer, record = load_target(cfg)
    results = run_evaluation(cfg.eval, model, tokenizer, record=record, output=cfg.get("output"))
    print(format_results(results))
