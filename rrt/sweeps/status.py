"""`python -m rrt.sweeps.status <sweep dir>`: one line per run of a sweep (state, step, tokens, last loss, eval Avg).

Reads only run records, so it works while the sweep is queued, running, preempted or done, and never fails on
one bad record: a record that cannot be read is shown ``corrupt``, and a ``running`` record whose process is
gone (old heartbeat, or a dead pid on this host) is shown ``stale``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from rrt.records import RECORD_NAME, read_records

STALE_AFTER_S = 600.0  # the trainer rewrites its heartbeat at least every log interval; 10 minutes is long past it
COLUMNS = ["run", "state", "step", "tokens", "loss", "eval_avg", "slurm_job", "note"]


def section(record: dict, key: str, kind: type) -> Any:
    """``record[key]`` when it has the expected type, else an empty one: a null or mangled section shows as empty."""
    value = record.get(key)
    return value if isinstance(value, kind) else kind()


def rows_of(record: dict, key: str) -> list[dict]:
    """The dict rows of a list section; anything else in it (a null row, a hand-edited string) is not a row."""
    return [row for row in section(record, key, list) if isinstance(row, dict)]


def eval_avg(evals: list[dict]) -> float | None:
    """Mean task score at the final exit (the paper's Avg), in percent; None before any eval."""
    scored = [e for e in evals if isinstance(e.get("value"), (int, float))]
    if not scored:
        return None
    final = max((e.get("exit_loop") or 0) for e in scored)
    values = [e["value"] for e in scored if (e.get("exit_loop") or 0) == final]
    return 100 * sum(values) / len(values)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one owned by another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists; signalling it is not ours to do
        pass
    return True


def duration(seconds: float) -> str:
    """``seconds`` in the largest unit that keeps at least two of it: 90 s, 25 min, 30 h, 12 d."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def staleness(record: dict, stale_after_s: float) -> str | None:
    """Why a ``running`` record's process is gone, or None while it may be alive.

    A killed job (kill -9, node failure, OOM) never writes its final status, so its record says ``running``
    for ever; the heartbeat and pid the trainer writes tell. A record without a heartbeat (written before
    heartbeats existed) cannot be judged and keeps its status.
    """
    try:
        beat = dt.datetime.fromisoformat(str(record["heartbeat"]))
    except (KeyError, ValueError):
        return None
    beat = beat if beat.tzinfo else beat.replace(tzinfo=dt.timezone.utc)
    age = (dt.datetime.now(dt.timezone.utc) - beat).total_seconds()
    if age > stale_after_s:
        return f"last heartbeat {duration(age)} ago ({record['heartbeat']})"
    pid, host = record.get("pid"), record.get("host")
    if isinstance(pid, int) and host == socket.gethostname() and not pid_alive(pid):
        return f"pid {pid} is not running on {host}"
    return None


def run_row(record: dict, sweep_dir: Path, stale_after_s: float) -> dict:
    """The status line of one readable record; sections that are null or of the wrong type show as empty."""
    metrics = [m for m in rows_of(record, "metrics") if "loss" in m]
    last = metrics[-1] if metrics else {}
    state, note = record["status"], None
    if state == "running":
        note = staleness(record, stale_after_s)
        state = "stale" if note else state
    return {
        "run": str(Path(record["record_path"]).parent.relative_to(sweep_dir)),
        "state": state,
        "step": f"{last.get('step', 0)}/{section(record, 'budget', dict).get('steps', '?')}",
        "tokens": last.get("tokens", 0),
        "loss": last.get("loss"),
        "eval_avg": eval_avg(rows_of(record, "evals")),
        "slurm_job": section(record, "cluster", dict).get("slurm_job_id"),
        "note": note,
    }


def sweep_status(sweep_dir: str | Path, stale_after_s: float = STALE_AFTER_S) -> pd.DataFrame:
    """Every run under ``sweep_dir``; run dirs that Hydra made but that have no record yet are 'queued'."""
    sweep_dir = Path(sweep_dir).absolute()
    records, problems = read_records(sweep_dir)
    rows = [run_row(r, sweep_dir, stale_after_s) for r in records]
    seen = {sweep_dir / row["run"] for row in rows} | {path.parent for path, _ in problems}
    for path, reason in problems:
        rows.append({"run": str(path.parent.relative_to(sweep_dir)), "state": "corrupt", "note": reason})
    for hydra_dir in sweep_dir.rglob(".hydra"):
        if hydra_dir.parent not in seen and not (hydra_dir.parent / RECORD_NAME).exists():
            rows.append({"run": str(hydra_dir.parent.relative_to(sweep_dir)), "state": "queued"})
    table = pd.DataFrame(rows, columns=COLUMNS).sort_values("run", ignore_index=True)
    table["eval_avg"] = pd.to_numeric(table["eval_avg"])
    return table


def positive_seconds(text: str) -> float:
    """A positive number of seconds (argparse type: anything else is a one-line usage error)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="e.g. runs/sweeps/f1_init")
    parser.add_argument(
        "--stale-after",
        type=positive_seconds,
        default=STALE_AFTER_S,
        metavar="SECONDS",
        help=f"a running record whose heartbeat is older is shown stale (default {STALE_AFTER_S:.0f})",
    )
    args = parser.parse_args(argv)
    if not Path(args.sweep_dir).is_dir():
        print(
            f"error: {args.sweep_dir} is not a directory (sweeps live in <paths.runs_root>/sweeps/<experiment>)",
            file=sys.stderr,
        )
        return 2
    table = sweep_status(args.sweep_dir, args.stale_after)
    if table.empty:
        print(f"{args.sweep_dir}: no runs yet")
        return 0
    print(table.drop(columns="note").to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}"))
    notes = table.dropna(subset="note")
    if not notes.empty:
        print("\n" + "\n".join(f"{row.run}: {row.state}: {row.note}" for row in notes.itertuples()))
    counts = table["state"].value_counts().sort_index()
    print("\n" + ", ".join(f"{n} {state}" for state, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
