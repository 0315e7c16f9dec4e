"""Throughput rows for a run record's ``throughput`` section (read by analysis for Table K.2 / Fig. 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rrt.errors import UserError
from rrt.records import ENGINE_OF_BATCHING, RECORD_NAME, RunRecord
from rrt.serving.engine import EngineStats

ROW_KEY = ("engine", "exit_policy", "max_batch", "head_batch")  # a new measurement of one setting replaces the old row


def throughput_row(
    batching: str, exit_policy: str, stats: EngineStats, max_batch: int, requests: int, **extra: Any
) -> dict[str, Any]:
    """One measured engine run as a record row; ``batching`` is static, csb or cdb."""
    if batching not in ENGINE_OF_BATCHING:
        raise UserError(f"unknown batching {batching!r}; supported: {list(ENGINE_OF_BATCHING)}")
    return {
        "engine": ENGINE_OF_BATCHING[batching],
        "batching": batching,
        "exit_policy": exit_policy,
        "tokens_per_s": stats.tokens_per_s,
        "block_tokens_per_s": stats.tokens / stats.block_s if stats.block_s else None,
        "max_batch": max_batch,
        "requests": requests,
        "tokens": stats.tokens,
        "seconds": stats.seconds,
        "mean_exit_loop": stats.mean_exit_loop,
        "mean_batch": stats.mean_batch,
        **extra,
    }


def write_throughput(run_dir: str | Path, rows: list[dict[str, Any]]) -> RunRecord:
    """Add rows to the run's record, replacing earlier rows of the same engine, policy and batch size."""
    if not (Path(run_dir) / RECORD_NAME).exists():
        raise FileNotFoundError(
            f"{run_dir} has no {RECORD_NAME}: pass the run dir of the model that was served "
            "(train.py/eval.py write one), or create it with RunRecord.create(run_dir, setting=...)"
        )
    record = RunRecord.load(run_dir)
    record.replace_rows("throughput", rows, key=ROW_KEY)
    return record
