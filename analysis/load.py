"""Run records -> tidy pandas frames, in one call over any number of run / sweep directories.

A run is identified by its record's path, not by the ``run_id`` it wrote (sweep members are often named 0, 1, ...,
and one run can be reached from two roots): the same record found twice is loaded once, and every run's key
``run`` is its directory relative to the root it was found under, qualified by that root where two roots give the
same relative path. Nothing machine-specific (absolute paths) goes into the frames' shown columns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.columns import AVG, TASK_COLUMNS, TASKS
from analysis.uncertainty import avg_se, bootstrap_ppl_se
from rrt.records import LIST_SECTIONS, read_records

RUN_SECTIONS = ("setting", "params", "budget", "cluster", "timings", "summary")
RUN_FIELDS = ("run", "run_id", "status", "record_path", "git_revision", "created", "updated")
PREFERRED_PPL_DATASETS = ("heldout", "local_heldout")  # the local corpus's held-out split
# setting values that may be absolute paths (a post-training run's model, its start, a saved teacher): shown
# relative to the root they were found under
RELATIVE_SETTINGS = ("model", "start_from", "teacher")


class MissingRoot(FileNotFoundError):
    """A run root that does not exist (a typo must not read as "no runs")."""


@dataclass
class Runs:
    """Every run found, one frame per record section; list sections are long frames keyed by ``run``."""

    runs: pd.DataFrame
    metrics: pd.DataFrame
    evals: pd.DataFrame
    perplexity: pd.DataFrame
    throughput: pd.DataFrame
    problems: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.runs)

    def summary(self, exit_loop: int | None = None, complete_only: bool = True) -> pd.DataFrame:
        """One row per run: its setting (unprefixed), N-emb (billions), paper task scores (percent), Avg and its
        standard error ``Avg_se``, perplexity (``ppl_se``: bootstrap over documents, when the record has them) and
        last validation / training CE, at the final exit (``exit_loop=None``) or at a given loop. Throughput is not
        one number per run: see :meth:`configurations`."""
        runs = self.runs[self.runs["status"] == "complete"] if complete_only else self.runs
        setting = runs.filter(like="setting.").rename(columns=lambda c: c.removeprefix("setting."))
        out = pd.concat([runs[["run", "status"]], setting], axis=1).set_index("run")
        out["n_emb"] = runs.set_index("run").get("params.non_embedding", pd.Series(dtype=float)) / 1e9
        loops = out["loops"] if "loops" in out else pd.Series(dtype=float)
        if "variant" in out:  # full / reduced models loop once (a reduced run's loops name the B it stands in for)
            loops = loops.where(out["variant"].fillna("recursive") == "recursive", 1)
        out = out.join(_task_scores(self.evals, exit_loop, loops)).join(
            _perplexities(self.perplexity, exit_loop, loops)
        )
        if exit_loop is None:
            out = out.join(_last_loss(self.metrics))
        for column in [*TASK_COLUMNS, AVG, "Avg_se", "ppl", "ppl_se", "val_loss", "loss"]:
            if column not in out:
                out[column] = np.nan
        return out.reset_index()

    def configurations(self) -> pd.DataFrame:
        """Serving throughput, one row per run and configuration, measured and simulated numbers in separate
        columns (see :func:`throughput_configurations`)."""
        return throughput_configurations(self.throughput)


def load_runs(*roots: str | Path) -> Runs:
    """Load every ``record.json`` under ``roots`` (corrupt or partial ones land in ``problems``, by path).
    A root that does not exist raises :class:`MissingRoot`."""
    missing = [str(root) for root in roots if not Path(root).exists()]
    if missing:
        raise MissingRoot(f"no such run directory: {', '.join(missing)}")
    found: list[tuple[Path, dict[str, Any]]] = []
    problems: list[tuple[Path, str]] = []
    for root in map(Path, roots):
        records, root_problems = read_records(root)
        found += [(root, record) for record in records]
        problems += root_problems
    found = _once_per_path(found)
    for (root, record), key in zip(found, _keys(found)):
        record["run"] = key
        _relative_settings(record, root)
    records = [record for _, record in found]
    return Runs(
        runs=_runs_frame(records),
        **{section: _long_frame(records, section) for section in LIST_SECTIONS},
        problems=list({Path(path).resolve(): (path, reason) for path, reason in problems}.values()),
    )


def _once_per_path(found: list[tuple[Path, dict[str, Any]]]) -> list[tuple[Path, dict[str, Any]]]:
    """The first sighting of each record file (two roots may overlap, e.g. ``runs/`` and ``runs/sweep``)."""
    seen: dict[Path, tuple[Path, dict[str, Any]]] = {}
    for root, record in found:
        seen.setdefault(Path(record["record_path"]).resolve(), (root, record))
    return list(seen.values())


def run_dir_of(record_path: str | Path) -> Path:
    """The run dir of a record file."""
    return Path(record_path).parent


def _root_dir(root: str | Path) -> Path:
    """The directory a root stands for (a root may name a record file)."""
    root = Path(root)
    return root.parent if root.is_file() else root


def relative_to_root(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` (a run dir, a sweep dir or a record file), POSIX-style; the root itself is
    its name, and a path outside the root keeps only its name, so no machine's absolute layout is shown."""
    base, resolved = _root_dir(root).resolve(), Path(path).resolve()
    if resolved != base and resolved.is_relative_to(base):
        return resolved.relative_to(base).as_posix()
    return resolved.name


def shown_root(root: str | Path) -> str:
    """A root as the report shows it: as given when relative, relative to the working directory when inside it,
    else its name."""
    root = Path(root)
    if not root.is_absolute():
        return root.as_posix()
    cwd = Path.cwd().resolve()
    return Path(os.path.relpath(root, cwd)).as_posix() if root.resolve().is_relative_to(cwd) else root.name


def shown_path(path: str | Path, roots: list[str | Path]) -> str:
    """A file found under ``roots`` as the report shows it: the first root containing it as shown, then the
    file's path below that root."""
    resolved = Path(path).resolve()
    for root in roots:
        base = _root_dir(root)
        if resolved.is_relative_to(base.resolve()):
            return f"{shown_root(base)}/{relative_to_root(resolved, base)}"
    return resolved.name


def _keys(found: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """Unique run keys: the run dir relative to its root; clashes between roots qualified by the root as shown,
    then (roots shown alike) by the root's position."""
    keys = [relative_to_root(run_dir_of(record["record_path"]), root) for root, record in found]
    keys = _qualify(keys, [f"{shown_root(root)}/" for root, _ in found])
    roots = list(dict.fromkeys(root for root, _ in found))
    return _qualify(keys, [f"root{roots.index(root) + 1}:" for root, _ in found])


def _qualify(keys: list[str], prefixes: list[str]) -> list[str]:
    """Prefix only the keys that clash."""
    clash = pd.Series(keys, dtype=object).duplicated(keep=False)
    return [prefix + key if clashing else key for key, prefix, clashing in zip(keys, prefixes, clash)]


def _relative_settings(record: dict[str, Any], root: Path) -> None:
    setting = record.get("setting") or {}
    for key in RELATIVE_SETTINGS:
        if isinstance(setting.get(key), str) and Path(setting[key]).is_absolute():
            setting[key] = relative_to_root(setting[key], root)


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
    rows = [{"run": r["run"], **row} for r in records for row in (r.get(section) or []) if isinstance(row, dict)]
    frame = pd.DataFrame(rows, columns=["run"] if not rows else None)
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
    last = pd.to_numeric(frame["run"].map(loops), errors="coerce")
    last = last.fillna(frame.groupby("run")["exit_loop"].transform("max"))
    return frame[frame["exit_loop"].isna() | (frame["exit_loop"] == last)]


def _task_scores(evals: pd.DataFrame, exit_loop: int | None, loops: pd.Series) -> pd.DataFrame:
    """Paper columns in percent; Avg (and its standard error ``Avg_se`` from the tasks' ``stderr``) only when
    all seven tasks are there (the paper's definition)."""
    wanted = {spec: column for column, spec in TASKS.items()}
    if evals.empty or not {"task", "metric", "value"} <= set(evals):
        return pd.DataFrame(columns=[*TASK_COLUMNS, AVG, "Avg_se"])
    evals = _at_exit(evals, exit_loop, loops)
    column = pd.Series([wanted.get(key) for key in zip(evals["task"], evals["metric"])], index=evals.index)
    stderr = pd.to_numeric(evals["stderr"], errors="coerce") if "stderr" in evals else np.nan
    evals = evals.assign(column=column, stderr=stderr).dropna(subset=["column"])
    if evals.empty:
        return pd.DataFrame(columns=[*TASK_COLUMNS, AVG, "Avg_se"])
    wide = evals.pivot_table(index="run", columns="column", values=["value", "stderr"], aggfunc="last", dropna=False)
    scores = wide["value"].reindex(columns=TASK_COLUMNS) * 100
    scores[AVG] = scores[TASK_COLUMNS].mean(axis=1, skipna=False)
    stderrs = wide["stderr"].reindex(columns=TASK_COLUMNS)
    scores["Avg_se"] = stderrs.apply(avg_se, axis=1) * 100
    scores.columns.name = None
    return scores


def _perplexities(perplexity: pd.DataFrame, exit_loop: int | None, loops: pd.Series) -> pd.DataFrame:
    """``ppl:<dataset>`` per dataset, and ``ppl`` on the held-out split (else the most common dataset), with
    ``ppl_se``, its bootstrap standard error over documents where the row lists them (``doc_nll``/``doc_tokens``)."""
    if perplexity.empty or not {"dataset", "ppl"} <= set(perplexity):
        return pd.DataFrame(columns=["ppl", "ppl_se"])
    perplexity = _at_exit(perplexity, exit_loop, loops)
    if perplexity.empty:
        return pd.DataFrame(columns=["ppl", "ppl_se"])
    perplexity = perplexity.assign(ppl_se=[_row_ppl_se(row) for _, row in perplexity.iterrows()])
    wide = perplexity.pivot_table(index="run", columns="dataset", values="ppl", aggfunc="last")
    se = perplexity.pivot_table(index="run", columns="dataset", values="ppl_se", aggfunc="last", dropna=False)
    datasets = perplexity["dataset"].value_counts()
    main = next((d for d in PREFERRED_PPL_DATASETS if d in datasets), datasets.index[0] if len(datasets) else None)
    out = wide.add_prefix("ppl:")
    out["ppl"] = wide[main] if main in wide else np.nan
    out["ppl_se"] = se[main].reindex(out.index) if main in se else np.nan
    out.columns.name = None
    return out


def _row_ppl_se(row: pd.Series) -> float:
    nll, tokens = row.get("doc_nll"), row.get("doc_tokens")
    if not isinstance(nll, list) or not isinstance(tokens, list):
        return np.nan
    return bootstrap_ppl_se(nll, tokens, float(row["ppl"]))


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
        last = metrics.assign(value=value).dropna(subset=["value"]).sort_values("step").groupby("run")["value"].last()
        out = out.reindex(out.index.union(last.index))
        out[column] = last
    return out


# one serving configuration (head_batch: how many exited tokens the engine gathers per head call)
THROUGHPUT_KEY = ["run", "engine", "batching", "exit_policy", "max_batch", "head_batch", "simulated"]
SIMULATION_MODES = ("paper", "full")  # rrt.serving.simulate.MODES: decode blocks only / everything counted
SIMULATED = [f"sim_{mode}_{value}" for mode in SIMULATION_MODES for value in ("tokens_per_s", "vs_vanilla", "vs_csb")]
MEASURED = ["measured_tokens_per_s", "measured_tokens_per_s_se", "measured_rounds"]
CONFIGURATION_COLUMNS = [*THROUGHPUT_KEY, "setup", "served", *MEASURED, "measured_vs_vanilla_paired"]
CONFIGURATION_COLUMNS += ["measured_vs_csb_paired", *SIMULATED, "mean_exit_loop", "teacher_forced_agreement"]


def throughput_configurations(throughput: pd.DataFrame) -> pd.DataFrame:
    """One row per serving configuration of a run: (engine, batching, exit policy, max batch, simulated or not).

    Measured numbers and simulated ones never share a column: a measured row's ``tokens_per_s`` is
    ``measured_tokens_per_s`` (``_se``: the standard error over its rounds, ``tokens_per_s_rounds``, when it has two
    or more), its own ``sim_<mode>_*`` keys (the simulator run on the same workload) stay ``sim_<mode>_*``; a row
    with ``simulated: true`` is simulated throughout, its ``tokens_per_s`` / ``vs_vanilla`` / ``vs_csb`` landing in
    ``sim_<its mode>_*``, its measured columns empty. ``measured_vs_*_paired`` is the benchmark's own ratio (median
    over rounds, each round against the same round's baseline). A row's ``model`` (the served model's label) is
    ``served``, so it cannot shadow the run setting's ``model``.
    """
    if throughput.empty or not {"engine", "tokens_per_s"} <= set(throughput):
        return pd.DataFrame(columns=CONFIGURATION_COLUMNS)
    rows = [_configuration_row(row) for row in throughput.to_dict("records")]
    frame = pd.DataFrame(rows).reindex(columns=CONFIGURATION_COLUMNS)
    frame["simulated"] = frame["simulated"].astype(bool)
    frame["max_batch"] = pd.to_numeric(frame["max_batch"], errors="coerce")
    frame["head_batch"] = pd.to_numeric(frame["head_batch"], errors="coerce")
    # the two simulation modes of one configuration are two rows of a record: one row here, first value per column
    frame = frame.groupby(THROUGHPUT_KEY, sort=False, dropna=False).first().reset_index()
    return frame.reindex(columns=CONFIGURATION_COLUMNS)


def _configuration_row(row: dict[str, Any]) -> dict[str, Any]:
    simulated = isinstance(row.get("simulated"), (bool, np.bool_)) and bool(row["simulated"])
    out = {
        key: row.get(key) for key in ("run", "engine", "batching", "exit_policy", "max_batch", "head_batch", "setup")
    }
    out |= {"simulated": simulated, "served": row.get("model")}
    out |= {key: _number(row.get(key)) for key in ("mean_exit_loop", "teacher_forced_agreement")}
    out |= {key: _number(row.get(key)) for key in SIMULATED if not simulated}
    if simulated:
        mode = row.get("mode")
        if mode in SIMULATION_MODES:
            out[f"sim_{mode}_tokens_per_s"] = _number(row.get("tokens_per_s"))
            for base in ("vanilla", "csb"):
                out[f"sim_{mode}_vs_{base}"] = _number(_median(row.get(f"vs_{base}")))
        return out
    listed = row.get("tokens_per_s_rounds")
    rounds = pd.to_numeric(pd.Series(listed if isinstance(listed, list) else [], dtype=object), errors="coerce")
    rounds = rounds.dropna()
    out["measured_tokens_per_s"] = _number(row.get("tokens_per_s"))
    out["measured_rounds"] = len(rounds) if len(rounds) else np.nan
    out["measured_tokens_per_s_se"] = float(rounds.std(ddof=1)) / np.sqrt(len(rounds)) if len(rounds) > 1 else np.nan
    for base in ("vanilla", "csb"):
        out[f"measured_vs_{base}_paired"] = _number(_median(row.get(f"vs_{base}")))
    return out


def _median(value: Any) -> Any:
    """A ratio as a row holds it: a number, or ``{"median", "min", "max"}`` over rounds."""
    return value.get("median") if isinstance(value, dict) else value


def _number(value: Any) -> float:
    try:
        return float(value) if value is not None else np.nan
    except (TypeError, ValueError):
        return np.nan
