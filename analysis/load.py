"""Run records -> tidy pandas frames, in one call over any number of run / sweep directories."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.columns import AVG, TASK_COLUMNS, TASKS
from rrt.records import LIST_SECTIONS, read_records

RUN_SECTIONS = ("setting", "params", "budget", "cluster", "timings", "summary")
RUN_FIELDS = ("run_id", "status", "run_dir", "record_path", "git_revision", "created", "updated")
PREFERRED_PPL_DATASETS = ("heldout", "local_heldout")  # the local corpus's held-out split


@dataclass
class Runs:
    """Every run found, one frame per record section; list sections are long frames keyed by ``run_id``."""

    runs: pd.DataFrame
    metrics: pd.DataFrame
    evals: pd.DataFrame
    perplexity: pd.DataFrame
    throughput: pd.DataFrame
    problems: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.runs)

    def summary(self, exit_loop: int | None = None, complete_only: bool = True) -> pd.DataFrame:
        """One row per run: its setting (unprefixed), N-emb (billions), paper task scores (percent) and Avg,
        perplexity, last validation / training CE and throughput per engine, at the final exit (``exit_loop=None``)
        or at a given loop."""
        runs = self.runs[self.runs["status"] == "complete"] if complete_only else self.runs
        setting = runs.filter(like="setting.").rename(columns=lambda c: c.removeprefix("setting."))
        out = pd.concat([runs[["run_id", "status"]], setting], axis=1).set_index("run_id")
        out["n_emb"] = runs.set_index("run_id").get("params.non_embedding", pd.Series(dtype=float)) / 1e9
        loops = out["loops"] if "loops" in out else pd.Series(dtype=float)
        if "variant" in out:  # full / reduced models loop once (a reduced run's loops name the B it stands in for)
            loops = loops.where(out["variant"].fillna("recursive") == "recursive", 1)
        out = out.join(_task_scores(self.evals, exit_loop, loops)).join(_perplexities(self.perplexity, exit_loop, loops))
        if exit_loop is None:
            out = out.join(_last_loss(self.metrics)).join(_throughputs(self.throughput))
        for column in [*TASK_COLUMNS, AVG, "ppl", "val_loss", "loss"]:
            if column not in out:
                out[column] = np.nan
        return out.reset_index()


def load_runs(*roots: str | Path, wandb: bool = True) -> Runs:
    """Load every ``record.json`` under ``roots`` (corrupt or partial ones land in ``problems``, by path);
    with ``wandb``, also runs that only left a wandb offline directory (see ``analysis.wandb_offline``)."""
    records, problems = read_records(*roots)
    if wandb:
        from analysis.wandb_offline import read_offline_runs  # imports wandb (slow): only when asked

        known = {Path(r["record_path"]).parent.resolve() for r in records}
        extra, wandb_problems = read_offline_runs(*roots, skip_run_dirs=known)
        records += extra
        problems += wandb_problems
    _unique_run_ids(records)
    return Runs(
        runs=_runs_frame(records),
        **{section: _long_frame(records, section) for section in LIST_SECTIONS},
        problems=problems,
    )


def _unique_run_ids(records: list[dict[str, Any]]) -> None:
    """Sweep members are often named 0, 1, ...; qualify clashing ids with their parent directory."""
    ids = pd.Series([r["run_id"] for r in records])
    for record, clash in zip(records, ids.duplicated(keep=False)):
        if clash:
            record["run_id"] = f"{Path(record['record_path']).parent.parent.name}/{record['run_id']}"


def _runs_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for record in records:
        row = {key: record.get(key) for key in RUN_FIELDS}
        for section in RUN_SECTIONS:
            for key, value in (record.get(section) or {}).items():
                row[f"{section}.{key}"] = value
        rows.append(row)
    return pd.DataFrame(rows, columns=list(RUN_FIELDS) if not rows else None)


def _long_frame(records: list[dict[str, Any]], section: str) -> pd.DataFrame:
    rows = [{"run_id": r["run_id"], **row} for r in records for row in (r.get(section) or []) if isinstance(row, dict)]
    frame = pd.DataFrame(rows, columns=["run_id"] if not rows else None)
    if "exit_loop" in frame:
        frame["exit_loop"] = pd.to_numeric(frame["exit_loop"])
    return frame


def _at_exit(frame: pd.DataFrame, exit_loop: int | None, loops: pd.Series) -> pd.DataFrame:
    """Rows at the given exit loop. The final exit: rows without an exit loop, or at the run's ``loops`` (its
    setting), or, for a run whose loops are unknown, at its deepest exit."""
    if frame.empty:
        return frame
    if "exit_loop" not in frame:
        return frame if exit_loop is None else frame.iloc[0:0]
    if exit_loop is not None:
        return frame[frame["exit_loop"] == exit_loop]
    last = pd.to_numeric(frame["run_id"].map(loops), errors="coerce")
    last = last.fillna(frame.groupby("run_id")["exit_loop"].transform("max"))
    return frame[frame["exit_loop"].isna() | (frame["exit_loop"] == last)]


def _task_scores(evals: pd.DataFrame, exit_loop: int | None, loops: pd.Series) -> pd.DataFrame:
    """Paper columns in percent; Avg only when all seven tasks are there (the paper's definition)."""
    wanted = {spec: column for column, spec in TASKS.items()}
    if evals.empty or not {"task", "metric", "value"} <= set(evals):
        return pd.DataFrame(columns=[*TASK_COLUMNS, AVG])
    evals = _at_exit(evals, exit_loop, loops)
    column = pd.Series([wanted.get(key) for key in zip(evals["task"], evals["metric"])], index=evals.index)
    scores = (evals.assign(column=column).dropna(subset=["column"])
              .pivot_table(index="run_id", columns="column", values="value", aggfunc="last") * 100)
    scores = scores.reindex(columns=TASK_COLUMNS)
    scores[AVG] = scores[TASK_COLUMNS].mean(axis=1, skipna=False)
    scores.columns.name = None
    return scores


def _perplexities(perplexity: pd.DataFrame, exit_loop: int | None, loops: pd.Series) -> pd.DataFrame:
    """``ppl:<dataset>`` per dataset, and ``ppl`` on the held-out split (else the most common dataset)."""
    if perplexity.empty or not {"dataset", "ppl"} <= set(perplexity):
        return pd.DataFrame(columns=["ppl"])
    perplexity = _at_exit(perplexity, exit_loop, loops)
    wide = perplexity.pivot_table(index="run_id", columns="dataset", values="ppl", aggfunc="last")
    datasets = perplexity["dataset"].value_counts()
    main = next((d for d in PREFERRED_PPL_DATASETS if d in datasets), datasets.index[0] if len(datasets) else None)
    out = wide.add_prefix("ppl:")
    out["ppl"] = wide[main] if main in wide else np.nan
    out.columns.name = None
    return out


def _last_loss(metrics: pd.DataFrame) -> pd.DataFrame:
    """The last logged LM cross-entropy: training (``ce``, or ``loss`` when a run logs no separate CE) and
    validation (``val_ce``)."""
    out = pd.DataFrame(columns=["loss", "val_loss"])
    if metrics.empty or "step" not in metrics:
        return out
    for column, sources in (("loss", ("ce", "loss")), ("val_loss", ("val_ce",))):
        value = pd.Series(np.nan, index=metrics.index)
        for source in sources:
            if source in metrics:
                value = value.fillna(metrics[source])
        last = metrics.assign(value=value).dropna(subset=["value"]).sort_values("step").groupby("run_id")["value"].last()
        out = out.reindex(out.index.union(last.index))
        out[column] = last
    return out


def _throughputs(throughput: pd.DataFrame) -> pd.DataFrame:
    """tokens/s per engine: the best configuration measured for that engine in the run.

    A serving benchmark writes several rows per engine (exit policies, head batching); averaging them would mix
    a live policy with the ideal oracle one. The paper's CDB numbers use oracle exits, as does our best CDB row.
    """
    if throughput.empty or not {"engine", "tokens_per_s"} <= set(throughput):
        return pd.DataFrame()
    wide = throughput.pivot_table(index="run_id", columns="engine", values="tokens_per_s", aggfunc="max")
    wide = wide.add_prefix("thr:")
    wide.columns.name = None
    return wide
