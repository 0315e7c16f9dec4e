"""`python -m rrt.sweeps.status <sweep dir>`: one line per run of a sweep (state, step, tokens, last loss, eval Avg).

Reads only run records, so it works while the sweep is queued, running, preempted or done.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from rrt.records import RECORD_NAME, read_records


def eval_avg(evals: list[dict]) -> float | None:
    """Mean task score at the final exit (the paper's Avg), in percent; None before any eval."""
    if not evals:
        return None
    final = max((e.get("exit_loop") or 0) for e in evals)
    values = [e["value"] for e in evals if (e.get("exit_loop") or 0) == final]
    return 100 * sum(values) / len(values)


def run_row(record: dict, sweep_dir: Path) -> dict:
    metrics = [m for m in record.get("metrics", []) if "loss" in m]
    last = metrics[-1] if metrics else {}
    budget = record.get("budget", {})
    return {
        "run": str(Path(record["record_path"]).parent.relative_to(sweep_dir)),
        "state": record["status"],
        "step": f"{last.get('step', 0)}/{budget.get('steps', '?')}",
        "tokens": last.get("tokens", 0),
        "loss": last.get("loss"),
        "eval_avg": eval_avg(record.get("evals", [])),
        "slurm_job": record.get("cluster", {}).get("slurm_job_id"),
    }


def sweep_status(sweep_dir: str | Path) -> pd.DataFrame:
    """Every run under ``sweep_dir``; run dirs that Hydra made but that have no record yet are 'queued'."""
    sweep_dir = Path(sweep_dir).absolute()
    records, problems = read_records(sweep_dir)
    rows = [run_row(r, sweep_dir) for r in records]
    seen = {sweep_dir / row["run"] for row in rows} | {path.parent for path, _ in problems}
    for path, reason in problems:
        rows.append({"run": str(path.parent.relative_to(sweep_dir)), "state": f"unreadable record ({reason})"})
    for hydra_dir in sweep_dir.rglob(".hydra"):
        if hydra_dir.parent not in seen and not (hydra_dir.parent / RECORD_NAME).exists():
            rows.append({"run": str(hydra_dir.parent.relative_to(sweep_dir)), "state": "queued"})
    columns = ["run", "state", "step", "tokens", "loss", "eval_avg", "slurm_job"]
    table = pd.DataFrame(rows, columns=columns).sort_values("run", ignore_index=True)
    table["eval_avg"] = pd.to_numeric(table["eval_avg"])
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="e.g. runs/sweeps/f1_init")
    args = parser.parse_args(argv)
    if not Path(args.sweep_dir).is_dir():
        print(f"error: {args.sweep_dir} is not a directory (sweeps live in <paths.runs_root>/sweeps/<experiment>)", file=sys.stderr)
        return 2
    table = sweep_status(args.sweep_dir)
    if table.empty:
        print(f"{args.sweep_dir}: no runs yet")
        return 0
    print(table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}"))
    counts = table["state"].value_counts().sort_index()
    print("\n" + ", ".join(f"{n} {state}" for state, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
