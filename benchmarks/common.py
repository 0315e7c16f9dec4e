"""Shared helpers for ratio benchmarks: timing, a printed table, JSON results."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def portable(text: str, runs_root: Path) -> str:
    """``text`` (a record, a setting as JSON) with this machine's runs-root prefix dropped: paths relative to the
    runs root the runs were trained under (``train/<run>``; the root itself is ``.``)."""
    root = str(Path(runs_root).resolve())
    return text.replace(f"{root}/", "").replace(root, ".")


def timeit(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(name: str, rows: list[dict], columns: list[str], extra: dict | None = None) -> Path:
    """Print ``rows`` as an aligned table and save them (with the machine description) as JSON."""
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    machine = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu": platform.processor(),
    }
    out.write_text(json.dumps({"benchmark": name, "machine": machine, "rows": rows, **(extra or {})}, indent=1))
    print(f"saved {out}")
    return out


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def thresholds_text(thresholds: list[float] | None) -> str:
    """An exit head's per-loop thresholds for a table ("n/a" without a head)."""
    return " / ".join(f"{t:.3f}" for t in thresholds) if thresholds else "n/a"
