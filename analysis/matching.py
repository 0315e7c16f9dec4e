"""Which of our runs reproduce a paper row: the row's setting as constraints on run settings.

Our runs use another model (gemma-3-270m) and tiny token budgets, so a paper row matches runs by *setting*
(variant, loops, init, LoRA rank / init, distillation, early exit: loss, coefficient, self-KD, phase Post / Co
from ``early_exit_phase``, data Overlap / New from ``early_exit_data``), never by model or N-emb. Where a table varies
the uptraining budget (Table 2: original / 15B / 60B; I.1: 15B / 60B), budgets are compared by rank: the paper's
k-th smallest budget matches our k-th smallest ``token_budget`` of the same model; ``token_budget: 0`` is "original".
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

TIER = "budget_tier"
ORIGINAL = "original"
# Values a run has when its setting does not record a key (an older record, or a setting the code lacks); only
# values that hold for every run the code can make. A run without a token_budget counts as uptrained on the base
# (smallest) budget; early_exit_freeze (J.1: freeze the model, train a head LoRA) is a mode this project lacks.
# early_exit_phase and early_exit_data have no default: a run that does not say is matched by neither Post nor Co,
# Overlap nor New (see derive_early_exit for what can be derived honestly).
DEFAULTS: dict[str, Any] = {
    "variant": "recursive",
    "pretrained": True,
    "lora_rank": 0,
    "distill": "none",
    "early_exit": "none",
    "early_exit_kd": False,
    "early_exit_freeze": False,
    "uptrained": True,
    TIER: 0,
    "adapter": "lora",
}


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def paper_setting(row: pd.Series, full_n_emb: float | None = None) -> dict[str, Any]:
    """Setting constraints of one paper row (columns as in analysis/paper/*.csv)."""
    loops, pt = row.get("loops"), row.get("pt")
    if _present(loops):
        keys: dict[str, Any] = {
            "variant": "recursive",
            "loops": int(loops),
            "init": row.get("init"),
            "pretrained": bool(pt) if _present(pt) else True,
        }
        rank = row.get("lora_rank")
        keys["lora_rank"] = int(rank) if _present(rank) else 0
        if keys["lora_rank"] and _present(row.get("lora_init")):
            keys["lora_init"] = row["lora_init"]
        if keys["lora_rank"]:
            keys["adapter"] = "lora"  # the paper relaxes with LoRA: LaMDA / LaMDA++ runs are not its rows
    elif _present(pt) and not pt:
        keys = {"variant": "reduced"}
        if full_n_emb and _present(row.get("n_emb")):
            keys["loops"] = round(full_n_emb / row["n_emb"])  # reduced-size = 1/B of the full model
    else:
        keys = {"variant": "full"}
    keys["early_exit"] = "none"  # tables without an early-exit column trained none; J.1 / K.2 rows override it
    kd = row.get("kd")
    keys["distill"] = (
        (row.get("kd_func") if _present(row.get("kd_func")) else "forward_kl") if _present(kd) and kd else "none"
    )
    return {key: value for key, value in keys.items() if _present(value)}


def early_exit_setting(row: pd.Series) -> dict[str, Any]:
    """Early-exit constraints of a Table 3 / J.1 / K.2 row."""
    kind = row.get("early_exit")
    keys: dict[str, Any] = {"early_exit": kind if _present(kind) else "none"}
    if keys["early_exit"] == "aggressive":
        keys["early_exit_coef"] = float(row["early_exit_coef"])
    for column, key in (
        ("early_exit_kd", "early_exit_kd"),
        ("train", "early_exit_phase"),
        ("data", "early_exit_data"),
        ("freeze", "early_exit_freeze"),
    ):
        if _present(row.get(column)):
            keys[key] = row[column]
    return keys


def derive_early_exit(summary: pd.DataFrame) -> pd.DataFrame:
    """Fill ``early_exit_phase`` / ``early_exit_data`` where a record omits them but its setting implies them:
    a run that started from another run's model (``start_from``; records from before ``early_exit_phase`` set it
    only for post-training) post-trained its exits; co-training trains exits on the uptraining data itself, so its
    data overlaps (J.1's Co row). Nothing else is guessed: a run without either stays unmatched."""
    summary = summary.copy()
    exits = summary.get("early_exit", pd.Series("none", index=summary.index)).fillna("none") != "none"
    phase = summary.get("early_exit_phase", pd.Series(None, index=summary.index, dtype=object))
    started = summary.get("start_from", pd.Series(None, index=summary.index, dtype=object)).map(_present)
    summary["early_exit_phase"] = phase.where(phase.map(_present) | ~exits | ~started, "post")
    data = summary.get("early_exit_data", pd.Series(None, index=summary.index, dtype=object))
    co = summary["early_exit_phase"] == "co"
    summary["early_exit_data"] = data.where(data.map(_present) | ~co, "overlap")
    return summary


def budget_tiers(summary: pd.DataFrame) -> pd.Series:
    """Per run: ``original`` (token_budget 0), else the rank of its budget among its model's budgets (0, 1, ...)."""
    if "token_budget" not in summary:
        return pd.Series(float("nan"), index=summary.index, dtype=object)
    budget = pd.to_numeric(summary["token_budget"], errors="coerce")
    model = summary["model"] if "model" in summary else pd.Series("", index=summary.index)
    rank = budget.where(budget > 0).groupby(model).rank(method="dense") - 1
    return _tiers(rank, budget == 0)


def paper_tiers(ntok: pd.Series) -> pd.Series:
    """The paper's budgets ranked the same way (NaN = not uptrained = ``original``)."""
    return _tiers(ntok.rank(method="dense") - 1, ntok.isna())


def _tiers(rank: pd.Series, original: pd.Series) -> pd.Series:
    values = [ORIGINAL if is_original else (int(r) if _present(r) else None) for r, is_original in zip(rank, original)]
    return pd.Series(values, index=rank.index, dtype=object)


def matching(summary: pd.DataFrame, keys: dict[str, Any]) -> pd.DataFrame:
    """Runs of ``summary`` whose setting satisfies every constraint (missing keys take ``DEFAULTS``; a None
    constraint matches only missing values)."""
    mask = pd.Series(True, index=summary.index)
    for key, wanted in keys.items():
        if not _present(wanted):  # e.g. exit_loop None = the final exit: the row must not name one either
            mask &= summary[key].isna() if key in summary else True
            continue
        if key in summary:
            values = summary[key].where(summary[key].notna(), DEFAULTS.get(key))
        else:
            values = pd.Series([DEFAULTS.get(key)] * len(summary), index=summary.index, dtype=object)
        mask &= values.map(lambda value: _equal(value, wanted)).astype(bool)
    return summary[mask]


def _equal(value: Any, wanted: Any) -> bool:
    if not _present(value):
        return False
    if isinstance(wanted, bool) or isinstance(value, bool):
        return (
            bool(value) == bool(wanted)
            if isinstance(value, (bool, int, float))
            else str(value).lower() == str(wanted).lower()
        )
    if isinstance(wanted, (int, float)):
        try:
            return math.isclose(float(value), float(wanted))
        except (TypeError, ValueError):
            return False
    return str(value) == str(wanted)
