"""Run records: one self-describing JSON file per run, written atomically; read into tidy pandas frames.

A record is the only thing analysis reads. Layout of ``<run_dir>/record.json``::

    {
      "schema": 1,
      "run_id": "...", "run_dir": "...",
      "status": "running" | "complete" | "failed" | "interrupted", "error": null | "one line",
      "created": iso time, "updated": iso time, "heartbeat": iso time, "pid": .., "host": "..",
      "git_revision": "...", "config_hash": "..." (identity keys only), "overrides": ["lora.rank=64", ...],
      "config": {... resolved Hydra config ...},
      "setting": {                      # flat scalars read off the built model (analysis groups by these)
          "model": "gemma3_270m", "variant": "recursive" | "full" | "reduced", "pretrained": true,
          "loops": 2, "looping": "cycle", "init": "stepwise", "norm_init": "source",
          "lora_rank": 0, "lora_init": "svd", "adapter": "lora" | "lamda" | ..,
          "rank_q": .., "rank_kv": .., "rank_o": .., "rank_ffn": ..,      # effective ranks per group
          "distill": "none" | "forward_kl" | ..., "distill_weight": 0.0, "teacher": path, "teacher_sha256": "..",
          "early_exit": "none" | "weighted" | "aggressive", "early_exit_coef": .., "early_exit_kd": false,
          "early_exit_phase": null | "co" | "post", "early_exit_data": null | "new" | "overlap",
          "token_budget": int, "seed": 0, "data_skip_tokens": 0, "start_from": null | run dir
      },
      "relaxation": {"requested": {..}, "effective": {..}, "ranks": {linear: rank}, ...},   # relaxed runs only
      "warnings": ["..."],
      "params": {"total": .., "embedding": .., "non_embedding": .., "adapters": ..},
      "budget": {"tokens": .., "seq_len": .., "global_batch": .., "steps": .., "warmup_steps": ..},
      "cluster": {"world_size": 1, "num_nodes": 1, "devices": 1, "slurm_job_id": null, "hostname": ".."},
      "metrics": [{"step": 1, "tokens": 1024, "loss": .., "ce": .., "kd": .., "lr": .., "tokens_per_s": ..}, ...],
      "evals": [{"task": "piqa", "metric": "acc_norm", "value": 0.61, "stderr": 0.01, "n": 1838,
                 "num_fewshot": 0, "exit_loop": 2, "limit": null, "subset": null}, ...],
      "perplexity": [{"dataset": "local_heldout", "exit_loop": 2, "ppl": 13.5, "tokens": ..,
                      "context": 1024, "stride": 512}],
      "throughput": [{"engine": "cdb" | "vanilla" | "csb", "tokens_per_s": .., "batch": .., ...}],
      "saved_model": {"dir": "model", "dtype": "float32" | "bfloat16", "bytes": ..},   # save_dtype
      "timings": {"convert_s": .., "train_s": .., "eval_s": ..}
    }
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rrt.utils.atomic import atomic_write_json

SCHEMA = 1
RECORD_NAME = "record.json"
LIST_SECTIONS = ("metrics", "evals", "perplexity", "throughput")
# A throughput row's ``engine`` per serving ``batching`` (the names analysis maps the paper's Batching column to).
ENGINE_OF_BATCHING = {"static": "vanilla", "csb": "csb", "cdb": "cdb"}
log = logging.getLogger(__name__)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_revision(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class RunRecord:
    """The record of one run; every mutation is followed by an atomic rewrite of the file."""

    def __init__(self, run_dir: str | Path, data: dict[str, Any]):
        self.run_dir = Path(run_dir)
        self.data = data

    @property
    def path(self) -> Path:
        return self.run_dir / RECORD_NAME

    @classmethod
    def create(cls, run_dir: str | Path, **fields: Any) -> "RunRecord":
        run_dir = Path(run_dir)
        data: dict[str, Any] = {
            "schema": SCHEMA,
            "run_id": run_dir.name,
            "run_dir": str(run_dir.resolve()),
            "status": "running",
            "created": now(),
            "updated": now(),
            "git_revision": git_revision(),
            "config": {},
            "setting": {},
            "params": {},
            "budget": {},
            "cluster": {},
            "timings": {},
            **{section: [] for section in LIST_SECTIONS},
        }
        data.update(fields)
        record = cls(run_dir, data)
        record.save()
        return record

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunRecord":
        path = Path(run_dir) / RECORD_NAME
        return cls(Path(run_dir), json.loads(path.read_text()))

    @classmethod
    def open(cls, run_dir: str | Path) -> "RunRecord":
        """The run's record as it is (a resumed or finished run), or a new one."""
        if (Path(run_dir) / RECORD_NAME).exists():
            return cls.load(run_dir)
        return cls.create(run_dir)

    def save(self) -> None:
        self.data["updated"] = now()
        atomic_write_json(self.path, self.data, default=_json_default)

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    def append(self, section: str, rows: dict[str, Any] | Iterable[dict[str, Any]]) -> None:
        rows = [rows] if isinstance(rows, dict) else list(rows)
        self.data.setdefault(section, []).extend(rows)
        self.save()

    def truncate_metrics(self, after_step: int) -> None:
        """Drop metric rows beyond ``after_step`` (a resumed run re-logs them from its checkpoint)."""
        self.data["metrics"] = [m for m in self.data.get("metrics", []) if m.get("step", 0) <= after_step]
        self.save()

    def replace_rows(self, section: str, rows: Iterable[dict[str, Any]], key: tuple[str, ...]) -> None:
        """Insert rows, replacing earlier rows with the same key (re-running an eval overwrites it)."""
        rows = list(rows)
        new_keys = {tuple(r.get(k) for k in key) for r in rows}
        kept = [r for r in self.data.get(section, []) if tuple(r.get(k) for k in key) not in new_keys]
        self.data[section] = kept + rows
        self.save()

    @property
    def complete(self) -> bool:
        return self.data.get("status") == "complete"


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def find_records(*roots: str | Path) -> list[Path]:
    """Every record.json under the given run dirs / sweep dirs, sorted."""
    paths: set[Path] = set()
    for root in roots:
        root = Path(root)
        if root.is_file() and root.name == RECORD_NAME:
            paths.add(root)
        elif root.is_dir():
            paths.update(root.rglob(RECORD_NAME))
    return sorted(paths)


def read_records(*roots: str | Path) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """Parse every record; a corrupt or partial one is reported (path, reason) and skipped, never counted."""
    records, problems = [], []
    for path in find_records(*roots):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:  # ValueError: bad JSON or bytes that are not UTF-8
            problems.append((path, f"unreadable: {error}"))
            continue
        if not isinstance(data, dict):
            problems.append((path, f"not a record (JSON {type(data).__name__})"))
            continue
        missing = [k for k in ("schema", "run_id", "status", "setting") if k not in data]
        if missing:
            problems.append((path, f"missing fields {missing}"))
            continue
        data["record_path"] = str(path)
        records.append(data)
    for path, reason in problems:
        log.warning("skipping record %s: %s", path, reason)
    return records, problems
