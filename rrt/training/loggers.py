"""The experiment's loggers, told the whole experiment: resolved config and setting, sweep group, stable wandb id.

Without this, wandb and CSV see only the DataModule's hyperparameters, so a synced project cannot be grouped or
filtered by init, rank, distillation or loops, and a resumed run would start a second wandb run.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from rrt.extras import require
from rrt.records import RunRecord

SETTING_TAGS = ("variant", "init", "loops", "lora_rank", "adapter", "distill", "early_exit", "early_exit_phase")


def sweep_group() -> str | None:
    """The sweep a multirun job belongs to (its sweep dir's name), for wandb's ``group``; None for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir).name


def tags(setting: dict[str, Any]) -> list[str]:
    return [f"{key}:{setting[key]}" for key in SETTING_TAGS if setting.get(key) not in (None, "none")]


def wandb_id(record: RunRecord | None) -> str | None:
    """One id per run, kept in the record, so that a resumed run continues the same wandb run."""
    if record is None:
        return None
    if not record.data.get("wandb_id"):
        record.update(wandb_id=uuid.uuid4().hex[:12])
    return record.data["wandb_id"]


def _logger_choice(key: str) -> str:
    """How the user picked the logger (``logger=wandb_offline``), for messages; the config key outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    choice = HydraConfig.get().runtime.choices.get("logger") if HydraConfig.initialized() else None
    return f"logger={choice or key}"


def make_loggers(cfg: DictConfig, record: RunRecord | None) -> list:
    setting = record.data.get("setting", {}) if record is not None else {}
    loggers = []
    for key, logger_cfg in (cfg.logger or {}).items():
        if logger_cfg is None:
            continue
        extra = {}
        if str(logger_cfg.get("_target_", "")).endswith("WandbLogger"):
            require("wandb", "wandb", _logger_choice(str(key)), instead="use logger=csv")
            extra = {"id": wandb_id(record), "resume": "allow", "group": sweep_group(), "tags": tags(setting)}
        loggers.append(hydra.utils.instantiate(logger_cfg, **extra))
    return loggers


def log_experiment(loggers: list, config: dict[str, Any], setting: dict[str, Any]) -> None:
    """The resolved config and the record's setting as every logger's hyperparameters."""
    for logger in loggers:
        logger.log_hyperparams({**config, "setting": setting})
