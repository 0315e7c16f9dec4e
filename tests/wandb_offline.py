"""Test helper: read back what rrt's loggers gave wandb (``wandb/offline-run-*/run-<id>.wandb``), as dicts.

Analysis reads run records only (every run writes one); this reader only checks, in tests, that an offline wandb run
carries the config, the setting and a stable id.

wandb (0.31) has no public reader for offline runs, so this reads the ``.wandb`` file directly: a LevelDB-style log
(7-byte ``:W&B`` header, 32 KiB blocks of CRC/length/type-framed chunks) of ``wandb_internal_pb2.Record`` messages.
Only the run's config, history and summary are kept; a file that does not parse is reported, not raised.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2

HEADER = b":W&B"
HEADER_SIZE = 7
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
FULL, LAST = 1, 4


def read_offline_runs(
    *roots: str | Path, skip_run_dirs: set[Path] = frozenset()
) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """Every offline wandb run under ``roots`` whose run dir (the folder holding ``wandb/``) is not in
    ``skip_run_dirs``."""
    records, problems = [], []
    for path in sorted({p for root in roots for p in Path(root).rglob("offline-run-*/run-*.wandb")}):
        if path.parent.parent.parent.resolve() in skip_run_dirs:
            continue
        try:
            records.append(_record(path))
        except (OSError, ValueError, DecodeError) as error:
            problems.append((path, f"unreadable wandb offline run: {error}"))
    return records, problems


def _record(path: Path) -> dict[str, Any]:
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    run_id, status = path.stem.removeprefix("run-"), "running"
    for record in _records(path.read_bytes()):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id or run_id
            config.update(_items(record.run.config.update))
        elif kind == "config":
            config.update(_items(record.config.update))
        elif kind == "history":
            history.append(_items(record.history.item))
        elif kind == "summary":
            summary.update(_items(record.summary.update))
        elif kind == "exit":
            status = "complete" if record.exit.exit_code == 0 else "failed"
    config.pop("_wandb", None)
    metrics = [{"step": row.get("step", row.get("trainer/global_step", row.get("_step"))), **row} for row in history]
    setting = config.get("setting") if isinstance(config.get("setting"), dict) else _scalars(config)
    return {
        "schema": 1,
        "run_id": f"wandb-{run_id}",
        "status": status,
        "run_dir": str(path.parent.parent.parent),
        "record_path": str(path),
        "config": config,
        "setting": setting,
        "summary": {k: v for k, v in _scalars(summary).items() if not k.startswith("_")},
        "metrics": [{k: v for k, v in row.items() if not k.startswith("_")} for row in metrics],
    }


def _records(data: bytes) -> Iterator[wandb_internal_pb2.Record]:
    if not data.startswith(HEADER):
        raise ValueError("not a wandb datastore (missing :W&B header)")
    pos, pending = HEADER_SIZE, b""
    while pos + CHUNK_HEADER.size <= len(data):
        left = BLOCK_SIZE - pos % BLOCK_SIZE
        _, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        if left < CHUNK_HEADER.size or (length == 0 and kind == 0):  # block trailer / zero padding
            pos += left
            continue
        pending += data[pos + CHUNK_HEADER.size : pos + CHUNK_HEADER.size + length]
        pos += CHUNK_HEADER.size + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _items(items: Any) -> dict[str, Any]:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def _scalars(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts flattened to dotted keys; only scalars kept (what a run's setting is made of)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_scalars(value, f"{prefix}{key}."))
        elif isinstance(value, (str, int, float, bool)) or value is None:
            out[f"{prefix}{key}"] = value
    return out
