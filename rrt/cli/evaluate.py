"""``python eval.py run=<run dir> | checkpoint=<dir> | model=<embedded model>``: lm-eval accuracy + perplexity.

The evaluation itself is ``rrt.evaluation.runner.run_evaluation``; this module finds the model and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from rrt.cli.errors import compose_errors, one_line_errors
from rrt.conf import CONFIG_PATH
from rrt.errors import UserError
from rrt.evaluation.runner import run_evaluation, validate
from rrt.records import RECORD_NAME, RunRecord
from rrt.validation import check_device, check_output_file


def format_results(results: dict[str, list[dict]]) -> str:
    """Accuracy as task x exit loop (value ± stderr), then perplexity, as plain-text tables."""
    parts = []
    if results["evals"]:
        frame = pd.DataFrame(results["evals"])
        frame["score"] = [
            f"{v:.4f} ± {s:.4f}" if s is not None else f"{v:.4f}" for v, s in zip(frame.value, frame.stderr)
        ]
        table = frame.pivot_table(
            index=["task", "metric"], columns="exit_loop", values="score", aggfunc="first", sort=False
        )
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
            raise FileNotFoundError(
                f"run={run} is not a finished run dir: expected {RECORD_NAME} and a saved model in "
                "model/ (train.py writes both); for a model dir alone use checkpoint=<dir>"
            )
        record, model_dir = RunRecord.load(run), run / "model"
        if not record.complete:  # e.g. a diverged run: its model is not a result
            raise UserError(
                f"run={run} is {record.data.get('status')!r}, not complete ({record.data.get('error')}); "
                f"to score its model anyway use checkpoint={model_dir}"
            )
        tokenizer_name = tokenizer_name or OmegaConf.select(
            OmegaConf.create(record.data.get("config", {})), "model.tokenizer"
        )
    elif cfg.get("checkpoint"):
        model_dir = Path(cfg.checkpoint).expanduser()
        if not model_dir.is_dir():
            raise FileNotFoundError(f"checkpoint={model_dir} is not a directory")
        if not is_saved_model_dir(model_dir):  # a plain HF checkpoint
            return (
                assets.load_pretrained(str(model_dir)).to(cfg.device),
                assets.load_tokenizer(tokenizer_name or str(model_dir)),
                None,
            )
    elif cfg.get("model"):
        if cfg.model.get("source", "pretrained") != "pretrained":
            raise UserError(
                f"model={cfg.model.name} has no pretrained weights (source={cfg.model.source}); "
                "evaluate a trained run with run=<dir> instead"
            )
        return (
            assets.load_pretrained(cfg.model.name).to(cfg.device),
            assets.load_tokenizer(tokenizer_name or cfg.model.tokenizer),
            None,
        )
    else:
        raise UserError(
            "nothing to evaluate: give run=<run dir>, checkpoint=<saved model or HF checkpoint dir> "
            "or model=<embedded model, e.g. gemma3_270m>"
        )
    model = load_converted(model_dir, device=cfg.device)
    if tokenizer_name:
        return model, assets.load_tokenizer(tokenizer_name), record
    if not (model_dir / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no tokenizer; pass tokenizer=<embedded model name or dir>")
    return model, AutoTokenizer.from_pretrained(model_dir), record


@compose_errors
@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
@one_line_errors
def main(cfg: DictConfig) -> None:
    validate(cfg.eval)
    check_device(cfg.device)
    check_output_file(cfg.get("output"))
    model, tokenizer, record = load_target(cfg)
    results = run_evaluation(cfg.eval, model, tokenizer, record=record, output=cfg.get("output"))
    print(format_results(results))
