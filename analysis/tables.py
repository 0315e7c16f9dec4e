"""The paper's tables rebuilt from run records, each side by side with the paper's own numbers.

Every builder returns a :class:`PaperTable` whose ``frame`` has, per paper row (its setting in this project's
names), a ``paper`` row, then an ``ours`` and a ``delta`` (ours - paper) row per model found in the runs. ``ours`` is
the mean over the complete runs with that setting (``n_runs``), with the smallest ``token_budget`` among them and
the standard error of each score (``<score>_se``: lm-eval stderr, seeds, held-out documents); NaN where there is
none. ``basis`` names what scores a row (ours fall back to perplexity or losses without lm-eval). ``checks`` says
whether the paper's conclusions hold, from both sources' rows; ours only when conclusive (see analysis.checks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from analysis.checks import (
    MIN_TOKENS,
    OURS,
    PAPER,
    Check,
    Rule,
    best,
    greater,
    greater_at_same,
    largest_is_worse,
)
from analysis.columns import AVG, BASES, PAPER_PPL, TASK_COLUMNS
from analysis.load import Runs
from analysis.matching import (
    TIER,
    budget_tiers,
    derive_early_exit,
    early_exit_setting,
    matching,
    paper_setting,
    paper_tiers,
)
from analysis.paper import paper_table
from analysis.uncertainty import mean_se
from rrt.records import ENGINE_OF_BATCHING

PAPER_MODEL = "Gemma 2B"  # the paper's main model and the closest relative of our gemma-3-270m
ACCURACY = [*TASK_COLUMNS, AVG]
SETTING_COLUMNS = [
    "variant",
    "loops",
    "init",
    "pretrained",
    "lora_rank",
    "lora_init",
    "adapter",
    "distill",
    TIER,
    "token_budget",
    "uptrained",
    "early_exit",
    "early_exit_coef",
    "early_exit_kd",
    "early_exit_phase",
    "early_exit_data",
    "early_exit_freeze",
    "engine",
    "exit_loop",
]
OURS_ONLY = ["ppl", "val_loss", "loss"]  # our fallback scores (see columns.BASES); the paper has no such columns


@dataclass
class PaperTable:
    name: str
    title: str
    frame: pd.DataFrame
    checks: pd.DataFrame
    basis: str | None
    note: str


@dataclass(frozen=True)
class _Row:
    """One paper row: its values, the setting our runs must have, the exit loop to read, and display-only keys."""

    paper: pd.Series
    setting: dict[str, Any]
    exit_loop: int | None = None
    show: dict[str, Any] = field(default_factory=dict)


# our values for one paper row and model: one dict, or one per configuration (K.2: one per serving configuration)
Ours = Callable[[pd.DataFrame, dict[int | None, pd.DataFrame], _Row], dict[str, Any] | list[dict[str, Any]]]


def _ours_accuracy(matched: pd.DataFrame, by_exit: dict[int | None, pd.DataFrame], row: _Row) -> dict[str, float]:
    means = {column: matched[column].mean() for column in [*ACCURACY, *OURS_ONLY]}
    return {**means, **{f"{basis}_se": mean_se(matched[basis], matched.get(f"{basis}_se")) for basis in BASES}}


def _paper_budget(row: pd.Series) -> float:
    """The paper row's training tokens (``ntok``, else the early-exit post-training ``ee_ntok``; billions)."""
    billions = row.get("ntok", row.get("ee_ntok", np.nan))
    return float(billions) * 1e9 if pd.notna(billions) else np.nan


def _compare(
    runs: Runs, rows: list[_Row], values: list[str], ours: Ours = _ours_accuracy, delta: list[str] = ACCURACY
) -> tuple[pd.DataFrame, list[str]]:
    summaries = {exit_loop: _summary(runs, exit_loop) for exit_loop in {row.exit_loop for row in rows} | {None, 1}}
    models = sorted(summaries[None]["model"].dropna().unique())
    out = []
    for group, row in enumerate(rows):
        base = {**row.setting, **row.show, "exit_loop": row.exit_loop, "_group": group}
        paper = {column: row.paper.get(column, np.nan) for column in values}
        out.append(
            {
                **base,
                "source": "paper",
                "model": row.paper.get("model", PAPER_MODEL),
                "n_runs": np.nan,
                "token_budget": _paper_budget(row.paper),
                "n_emb": row.paper.get("n_emb", np.nan),
                **paper,
            }
        )
        for model in models or [np.nan]:
            mine = {k: v[v["model"] == model] if models else v for k, v in summaries.items()}
            matched = matching(mine[row.exit_loop], row.setting)
            budget = pd.to_numeric(matched.get("token_budget", pd.Series(dtype=float)), errors="coerce")
            values_of = ours(matched, mine, row)
            for value in values_of if isinstance(values_of, list) else [values_of]:  # each ours row, then its delta
                out.append(
                    {
                        **base,
                        "source": "ours",
                        "model": model,
                        "n_runs": len(matched),
                        "token_budget": budget.min(),
                        "n_emb": matched["n_emb"].mean() if len(matched) else np.nan,
                        **value,
                    }
                )
                out.append({**base, "source": "delta", "model": model})
    frame = pd.DataFrame(out).assign(basis=None)  # filled by _label_basis once the table's basis is known
    settings = [c for c in SETTING_COLUMNS if c in frame and frame[c].notna().any()]
    errors = [c for c in frame if c.endswith("_se")]
    columns = [*settings, "source", "model", "n_runs", "basis", "n_emb", *values, *OURS_ONLY, *errors, "_group"]
    frame = frame.reindex(columns=list(dict.fromkeys(c for c in columns if c in frame)))
    return _fill_deltas(frame, delta), models


def _fill_deltas(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Delta rows = ours - paper, per paper row (``_group``) and model; each delta row follows its ours row."""
    paper = frame[frame["source"] == "paper"].set_index("_group")
    ours, delta = frame["source"] == "ours", frame["source"] == "delta"
    for column in columns:
        frame.loc[delta, column] = frame.loc[ours, column].to_numpy(dtype=float) - frame.loc[delta, "_group"].map(
            paper[column]
        ).to_numpy(dtype=float)
    return frame


def _summary(runs: Runs, exit_loop: int | None) -> pd.DataFrame:
    summary = derive_early_exit(runs.summary(exit_loop))
    summary[TIER] = budget_tiers(summary)
    if "token_budget" in summary:
        budget = pd.to_numeric(summary["token_budget"], errors="coerce")
        summary["uptrained"] = (budget > 0).where(budget.notna())
    if "model" not in summary:
        summary["model"] = np.nan
    return summary


def _basis(frame: pd.DataFrame) -> str | None:
    ours = frame[frame["source"] == "ours"]
    return next((b for b in BASES if b in ours and ours[b].notna().any()), None)


def _label_basis(frame: pd.DataFrame, basis: str | None) -> pd.DataFrame:
    """The ``basis`` column: the paper's rows are scored by Avg; ours with runs by ``basis``, marked when it is a
    fallback (no 7-task Avg in the runs)."""
    frame.loc[frame["source"] == "paper", "basis"] = AVG
    if basis is not None:
        label = basis if basis == AVG else f"{basis} (fallback: no Avg)"
        frame.loc[(frame["source"] == "ours") & (frame["n_runs"] > 0), "basis"] = label
    return frame


def _score(frame: pd.DataFrame, basis: str | None) -> tuple[pd.Series, pd.Series]:
    """Higher is better: the paper's Avg for paper rows; ours by ``basis`` (perplexity / loss negated), with the
    basis's standard error (the paper prints none)."""
    paper, ours = frame["source"] == "paper", frame["source"] == "ours"
    score = frame[AVG].where(paper) if AVG in frame else pd.Series(np.nan, index=frame.index)
    se = pd.Series(np.nan, index=frame.index)
    if basis is not None:
        score = score.fillna(((1 if BASES[basis] else -1) * frame[basis]).where(ours))
        se = frame[f"{basis}_se"].where(ours) if f"{basis}_se" in frame else se
    return score, se


def _checks(frame: pd.DataFrame, models: list[str], checks: list[Check], basis: str | None, rule: Rule) -> pd.DataFrame:
    score, se = _score(frame, basis)
    frame = frame.assign(score=score, score_se=se)
    paper = frame[frame["source"] == "paper"]
    table = {"check": [c.text for c in checks], "paper": [c.answer(paper, PAPER).verdict for c in checks]}
    for model in models or ["(no runs)"]:
        ours = frame[(frame["source"] == "ours") & (frame["model"] == model)]
        findings = [c.answer(ours, rule) for c in checks]
        table[f"ours ({model})"] = [f.verdict for f in findings]
        table[f"evidence ({model})"] = [f.reason for f in findings]
    table["ours scored by"] = [c.scored_by or basis or "n.a." for c in checks]
    return pd.DataFrame(table)


BUDGET_NOTE = (
    "budget_tier: the paper's k-th smallest uptraining budget (15B, 60B) matches our k-th smallest token_budget "
    "of the same model; original = not uptrained (token_budget 0); token_budget: training tokens per run "
    "(paper: ntok; ours: the smallest among the row's runs)"
)


def _note(basis: str | None, extra: str = "") -> str:
    scored = {
        AVG: "ours: lm-eval 7-task scores (percent)",
        "ppl": (
            "ours: no 7-task lm-eval scores in the runs, so our runs are compared by held-out perplexity "
            "(column ppl, lower is better) in the checks"
        ),
        "val_loss": (
            "ours: no lm-eval scores or perplexities in the runs, so our runs are compared by the last "
            "validation cross-entropy logged in training (column val_loss, lower is better) in the checks"
        ),
        "loss": (
            "ours: no lm-eval scores, perplexities or validation losses in the runs, so our runs are compared "
            "by the last training cross-entropy (column loss, lower is better) in the checks"
        ),
        None: "ours: no complete run matches any row",
    }[basis]
    return "; ".join(part for part in (scored, extra) if part)


def _table(
    name: str,
    title: str,
    runs: Runs,
    rows: list[_Row],
    values: list[str],
    checks: list[Check],
    rule: Rule,
    extra_note: str = "",
) -> PaperTable:
    frame, models = _compare(runs, rows, values)
    extra_note = "; ".join(p for p in (extra_note, BUDGET_NOTE if TIER in frame else "") if p)
    return _finish(name, title, frame, models, checks, rule, extra_note)


def _paper_rows_table(
    name: str, title: str, runs: Runs, model: str | None, checks: list[Check], rule: Rule
) -> PaperTable:
    """A table whose rows are the paper's own (one per paper row, settings read off it), scored on accuracy + ppl."""
    return _table(name, title, runs, _rows(_paper(name, model)), PPL_VALUES, checks, rule)


def _finish(
    name: str, title: str, frame: pd.DataFrame, models: list[str], checks: list[Check], rule: Rule, extra_note: str = ""
) -> PaperTable:
    basis = _basis(frame)
    frame = _label_basis(frame, basis)
    return PaperTable(
        name,
        title,
        frame.drop(columns=[c for c in frame if c.startswith("_")]).reset_index(drop=True),  # _: internal
        _checks(frame, models, checks, basis, rule),
        basis,
        _note(basis, extra_note),
    )


def _paper(name: str, model: str | None) -> pd.DataFrame:
    paper = paper_table(name)
    return paper[paper["model"] == model].reset_index(drop=True) if model and "model" in paper else paper


def _full_n_emb(paper: pd.DataFrame) -> dict[str, float]:
    full = paper[(paper["pt"] == True) & paper["loops"].isna()]  # noqa: E712 (a column of True/False/NaN)
    return full.groupby("model")["n_emb"].max().to_dict()


def _uptrained(row: pd.Series) -> dict[str, Any]:
    return {"uptrained": bool(pd.notna(row.get("ntok")))}


def _rows(paper: pd.DataFrame) -> list[_Row]:
    """Rows with their settings; the paper's k-th smallest budget must match our k-th smallest (see matching)."""
    full = _full_n_emb(paper) if "pt" in paper else {}
    tier = paper_tiers(paper["ntok"]) if "ntok" in paper else None
    out = []
    for i, row in paper.iterrows():
        setting = {**paper_setting(row, full.get(row.get("model"))), **(_uptrained(row) if "ntok" in paper else {})}
        if tier is not None:
            setting[TIER] = tier[i]
        out.append(_Row(row, setting))
    return out


PPL_VALUES = [*ACCURACY, *PAPER_PPL]
STEP, AVERAGE = "stepwise", "average"
RECURSIVE_B2 = {"variant": "recursive", "loops": 2, "pretrained": True, "lora_rank": 0}


def table_2(runs: Runs, model: str | None = PAPER_MODEL, rule: Rule = OURS) -> PaperTable:
    checks = [
        Check(
            "Uptraining lowers the full-size model's score (original > uptrained)",
            greater({"variant": "full", TIER: "original"}, {"variant": "full", TIER: 0}),
        )
    ]
    return _paper_rows_table("2", "Table 2: full-size models, original vs uptrained", runs, model, checks, rule)


def table_d1(runs: Runs, model: str | None = PAPER_MODEL, rule: Rule = OURS) -> PaperTable:
    rows = [_Row(row, {"variant": "full", "uptrained": False}) for _, row in _paper("D.1", model).iterrows()]
    return _table(
        "D.1",
        "Table D.1: pretrained checkpoints (ours: the original model, not uptrained)",
        runs,
        rows,
        ACCURACY,
        [],
        rule,
    )


def table_f1(runs: Runs, model: str | None = PAPER_MODEL, rule: Rule = OURS) -> PaperTable:
    checks = [
        Check("Stepwise is the best init for strict recursion (B=2)", best(RECURSIVE_B2, "init", STEP)),
        Check(
            "Recursive (Stepwise, B=2) beats the reduced-size model",
            greater({**RECURSIVE_B2, "init": STEP}, {"variant": "reduced", "loops": 2}),
        ),
        Check(
            "Pretrained init (Stepwise) beats random init (B=2)",
            greater({**RECURSIVE_B2, "init": STEP}, {"variant": "recursive", "loops": 2, "init": "random"}),
        ),
        Check(
            "Full-size model beats every recursive one", greater({"variant": "full"}, {**RECURSIVE_B2, "init": STEP})
        ),
    ]
    title = "Table F.1: looped-layer initialization (strict recursion)"
    return _paper_rows_table("F.1", title, runs, model, checks, rule)


def table_g2(runs: Runs, model: str | None = PAPER_MODEL, rule: Rule = OURS) -> PaperTable:
    relaxed = {"variant": "recursive", "loops": 2, "lora_init": "svd"}
    checks = [
        Check(
            "Average is the best init for relaxed models (largest SVD rank)",
            best(relaxed, "init", AVERAGE, largest="lora_rank"),
        ),
        Check(
            "SVD beats zero LoRA init (Average, rank 512)",
            greater(
                {**relaxed, "init": AVERAGE, "lora_rank": 512},
                {"variant": "recursive", "init": AVERAGE, "lora_rank": 512, "lora_init": "zero"},
            ),
        ),
        Check(
            "Relaxation helps Average init (rank 512 SVD > strict)",
            greater({**relaxed, "init": AVERAGE, "lora_rank": 512}, {**RECURSIVE_B2, "init": AVERAGE}),
        ),
    ]
    title = "Table G.2: relaxed models (init x rank x LoRA init)"
    return _paper_rows_table("G.2", title, runs, model, checks, rule)


def table_i1(runs: Runs, model: str | None = PAPER_MODEL, rule: Rule = OURS) -> PaperTable:
    step = {**RECURSIVE_B2, "init": STEP, TIER: 0}
    checks = [
        Check(
            "KD (forward KL) helps strict recursion",
            greater({**step, "distill": "forward_kl"}, {**step, "distill": "none"}),
        ),
        Check(
            "KD (forward KL) helps the relaxed model (Average, r=256)",
            greater(
                {"init": AVERAGE, "lora_rank": 256, "distill": "forward_kl"},
                {"init": AVERAGE, "lora_rank": 256, "distill": "none"},
            ),
        ),
        Check(
            "Longer uptraining helps (60B vs 15B tier, no KD)",
            greater({**step, TIER: 1, "distill": "none"}, {**step, "distill": "none"}),
        ),
    ]
    return _paper_rows_table("I.1", "Table I.1: longer uptraining and KD loss", runs, model, checks, rule)


def table_j1(runs: Runs, model: str | None = PAPER_MODEL, rule: Rule = OURS) -> PaperTable:
    """Table J.1 (incl. Table 3's rows) with Table 3's before-EE row as the baseline; exit loop 1 = loop-1 output."""
    del model  # J.1 is Gemma-only
    base = {**RECURSIVE_B2, "init": STEP, "uptrained": True, "distill": "none"}
    before = paper_table("3").iloc[[0]]
    rows = [_Row(r, {**base, "early_exit": "none", TIER: 0}) for _, r in before.iterrows()]
    rows += [
        _Row(r, {**base, **early_exit_setting(r)}, None if r["output"] == "final" else 1)
        for _, r in paper_table("J.1").iterrows()
    ]
    agg = {
        "early_exit": "aggressive",
        "early_exit_coef": 0.1,
        "early_exit_kd": False,
        "early_exit_phase": "post",
        "early_exit_data": "overlap",
        "early_exit_freeze": False,
    }
    weighted = {**agg, "early_exit": "weighted"}
    del weighted["early_exit_coef"]
    final = {"exit_loop": None}
    checks = [
        Check(
            "Aggressive EE (0.1) keeps the final output (>= before EE)",
            greater({**agg, **final}, {"early_exit": "none"}, or_equal=True),
        ),
        Check("Weighted EE hurts the final output", greater({"early_exit": "none"}, {**weighted, **final})),
        Check(
            "Aggressive EE (0.1): loop-1 output is weaker than the final",
            greater({**agg, **final}, {**agg, "exit_loop": 1}),
        ),
    ]
    return _table(
        "J.1",
        "Table J.1 / Table 3: early-exit training (final and loop-1 outputs)",
        runs,
        rows,
        PPL_VALUES,
        checks,
        rule,
    )


MID1, MID2 = "Avg@loop1", "Avg@loop2"


CONFIGURATION = [
    "batching",
    "exit_policy",
    "max_batch",
    "head_batch",
    "simulated",
]  # with engine: one serving configuration
MEASURED_K2 = ["measured_tokens_per_s", "measured_speedup_vs_vanilla", "measured_speedup_vs_csb"]
SIMULATED_K2 = {  # our column <- the configuration's simulated value (paper mode: the paper's method)
    "simulated_tokens_per_s": "sim_paper_tokens_per_s",
    "simulated_speedup_vs_vanilla": "sim_paper_vs_vanilla",
    "simulated_speedup_vs_csb": "sim_paper_vs_csb",
    "simulated_full_speedup_vs_vanilla": "sim_full_vs_vanilla",
    "simulated_full_speedup_vs_csb": "sim_full_vs_csb",
}
K2_VALUES = [
    "batching",
    "exit_policy",
    "max_batch",
    "head_batch",
    "setup",
    "throughput_from",
    AVG,
    MID1,
    MID2,
    *MEASURED_K2,
]
K2_VALUES += [*SIMULATED_K2, "mean_exit_loop", "teacher_forced_agreement"]
PAPER_SIMULATED, OURS_MEASURED, OURS_SIMULATED = "simulated (paper: A100)", "measured", "simulated (ours)"
MEASURED_RULE = "measured tokens/s at the same max_batch (paper: its simulated tokens/s as printed)"


def _ours_throughput(
    configurations: pd.DataFrame, matched: pd.DataFrame, by_exit: dict[int | None, pd.DataFrame], row: _Row
) -> list[dict[str, Any]]:
    """One row per serving configuration (batching, exit policy, max batch, measured or simulated) of the row's
    engine found in the matched runs, averaged over the runs that have it (``n_runs``), with those runs' scores;
    one row without throughput when the matched runs have none."""
    loop1 = by_exit[1]

    def scores(runs: pd.DataFrame) -> dict[str, Any]:
        return {**_ours_accuracy(runs, by_exit, row), MID1: loop1.loc[loop1["run"].isin(runs["run"]), AVG].mean()}

    mine = configurations[configurations["run"].isin(matched["run"]) & (configurations["engine"] == row.show["engine"])]
    if mine.empty:
        return [{**scores(matched), "measured_tokens_per_s_se": np.nan}]
    mine = mine.sort_values(["simulated", "max_batch"], kind="stable", na_position="last")
    out = []
    for values, group in mine.groupby(CONFIGURATION, sort=False, dropna=False):
        runs = matched[matched["run"].isin(group["run"])]
        budget = pd.to_numeric(runs.get("token_budget", pd.Series(dtype=float)), errors="coerce")
        simulated = bool(values[-1])
        setups = group["setup"].dropna().unique()
        out.append(
            {
                **scores(runs),
                **dict(zip(CONFIGURATION[:-1], values[:-1])),
                "n_runs": len(runs),
                "token_budget": budget.min(),
                "n_emb": runs["n_emb"].mean(),
                "setup": " / ".join(map(str, setups)) if len(setups) else np.nan,
                "throughput_from": OURS_SIMULATED if simulated else OURS_MEASURED,
                "measured_tokens_per_s": group["measured_tokens_per_s"].mean(),
                "measured_tokens_per_s_se": mean_se(group["measured_tokens_per_s"], group["measured_tokens_per_s_se"]),
                **{column: group[source].mean() for column, source in SIMULATED_K2.items()},
                "mean_exit_loop": group["mean_exit_loop"].mean(),
                "teacher_forced_agreement": group["teacher_forced_agreement"].mean(),
            }
        )
    return out


def _measured_speedups(frame: pd.DataFrame) -> pd.DataFrame:
    """Ours: measured tokens/s over the same model's measured full-size vanilla static (CSB) tokens/s at the
    same max_batch (a configuration without a max_batch only against one without)."""
    ours = frame["source"] == "ours"
    batch = frame["max_batch"].map(lambda value: "unknown" if pd.isna(value) else f"{float(value):g}")
    key = frame["model"].map(str) + "|" + batch
    for base, engine in (("vanilla", "vanilla"), ("csb", "csb")):
        reference = ours & (frame["variant"] == "full") & (frame["engine"] == engine)
        reference &= frame["throughput_from"] == OURS_MEASURED
        by_key = frame.loc[reference, "measured_tokens_per_s"].groupby(key[reference]).mean()
        frame.loc[ours, f"measured_speedup_vs_{base}"] = frame.loc[ours, "measured_tokens_per_s"] / key[ours].map(
            by_key
        ).astype(float)
    return frame


def table_k2(runs: Runs, model: str | None = PAPER_MODEL, rule: Rule = OURS) -> PaperTable:
    """Throughput: the paper's simulated rows as printed vs ours, one row per serving configuration; runs match by
    architecture and exit loss only (KD and budgets change accuracy, not speed). Measured and simulated numbers
    never share a column: ``measured_*`` are our engines' timings (speed-up over our measured full-size vanilla
    static row at the same max_batch), ``simulated_*`` the paper's simulator (paper: its A100 numbers; ours: the
    same method run on our workload, where the record has it, and ``simulated_full_*`` with everything counted).
    Deltas (ours - paper) only for like with like: accuracies and the simulated speed-ups."""
    paper = _paper("K.2", model).rename(
        columns={
            "acc_last": AVG,
            "acc_mid1": MID1,
            "acc_mid2": MID2,
            "speedup_vanilla": "simulated_speedup_vs_vanilla",
            "speedup_csb": "simulated_speedup_vs_csb",
        }
    )
    paper["simulated_tokens_per_s"] = paper[["thr_slimpajama", "thr_redpajama", "thr_pg19"]].mean(axis=1)
    paper["throughput_from"] = PAPER_SIMULATED
    paper["exit_policy"] = paper["exit"].map(lambda exits: "oracle" if pd.notna(exits) and bool(exits) else "none")
    rows = []
    for _, row in paper.iterrows():
        setting = {k: v for k, v in paper_setting(row).items() if k != "distill"}
        if setting["variant"] == "recursive":
            setting.update({k: v for k, v in early_exit_setting(row).items() if k in ("early_exit", "early_exit_coef")})
        rows.append(_Row(row, setting, show={"engine": ENGINE_OF_BATCHING[row["batching"]]}))
    ours_throughput = partial(_ours_throughput, runs.configurations())
    frame, models = _compare(runs, rows, K2_VALUES, ours=ours_throughput, delta=[])
    frame = _measured_speedups(frame)
    frame = _fill_deltas(frame, [AVG, MID1, "simulated_speedup_vs_vanilla", "simulated_speedup_vs_csb"])
    # what the checks compare (internal columns, not shown): the paper's simulated numbers as printed, at its own
    # (memory-capped) batches; ours measured, like with like at one max_batch
    paper_rows = frame["source"] == "paper"
    frame["_throughput"] = frame["simulated_tokens_per_s"].where(paper_rows, frame["measured_tokens_per_s"])
    frame["_throughput_se"] = frame["measured_tokens_per_s_se"].where(~paper_rows)
    frame["_batch"] = frame["max_batch"].astype(object).where(~paper_rows, "as printed")
    recursive = {"variant": "recursive", "lora_rank": 0, "engine": "cdb"}
    like = dict(same=("_batch",), each=("exit_policy",))
    checks = [
        Check(
            "Recursive + CDB beats the vanilla full-size model's throughput",
            greater_at_same(recursive, {"variant": "full", "engine": "vanilla"}, "_throughput", **like),
            MEASURED_RULE,
        ),
        Check(
            "Continuous sequence batching beats vanilla (full-size)",
            greater_at_same(
                {"variant": "full", "engine": "csb"}, {"variant": "full", "engine": "vanilla"}, "_throughput", **like
            ),
            MEASURED_RULE,
        ),
        Check(
            "Throughput falls as the LoRA rank grows (Average, Agg 0.1)",
            largest_is_worse(
                {"variant": "recursive", "loops": 2, "init": AVERAGE, "early_exit_coef": 0.1},
                "lora_rank",
                "_throughput",
                same=("_batch", "exit_policy"),
            ),
            MEASURED_RULE,
        ),
    ]
    return _finish(
        "K.2",
        "Table K.2 / Fig. 8: throughput (paper: simulated A100; ours: measured engines, simulated apart)",
        frame,
        models,
        checks,
        rule,
        "one ours row per serving configuration (engine, batching, exit_policy, max_batch); throughput_from says "
        "how a row's throughput was obtained; measured_*: our engines' tokens/s, speed-ups over our measured "
        "full-size vanilla static (CSB) row at the same max_batch; simulated_*: the paper's simulation method "
        "(paper: A100, tokens/s = mean over SlimP/RedP/PG19; ours: run on our workload where the record has it), "
        "simulated_full_*: ours with head, embedding and exited tokens' KV counted; deltas only for accuracies and "
        "simulated speed-ups",
    )


BUILDERS: dict[str, Callable[..., PaperTable]] = {
    "2": table_2,
    "D.1": table_d1,
    "F.1": table_f1,
    "G.2": table_g2,
    "I.1": table_i1,
    "J.1": table_j1,
    "K.2": table_k2,
}


def build_all(runs: Runs, model: str | None = PAPER_MODEL, min_tokens: int = MIN_TOKENS) -> dict[str, PaperTable]:
    """Every table, compared with paper rows of ``model`` (None: all the paper's models); our checks are
    conclusive only for runs of at least ``min_tokens`` training tokens (see analysis.checks.Rule)."""
    rule = Rule(min_tokens=min_tokens)
    return {name: builder(runs, model, rule) for name, builder in BUILDERS.items()}
