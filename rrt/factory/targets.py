"""What eval, serve and the exit-head fit score: the model, tokenizer and record of ``run=``, ``checkpoint=``
or ``model=``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rrt.errors import UserError
from rrt.records import RECORD_NAME, RunRecord


def model_dir_of(cfg: DictConfig) -> Path | None:
    """Where the served model's files (and its exit head) are: the run's model/ or the checkpoint dir."""
    if cfg.get("run"):
        return Path(cfg.run).expanduser() / "model"
    return Path(cfg.checkpoint).expanduser() if cfg.get("checkpoint") else None


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
