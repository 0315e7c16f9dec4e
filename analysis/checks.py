"""Directional checks ("does the paper's conclusion hold in our runs?"), computed from a table's rows.

A check reads one source's rows (the paper's, or ours for one model) with a ``score`` column (higher is better)
and answers True / False, or None when the rows it needs are missing or unscored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from analysis.matching import matching

Rows = pd.DataFrame
Answer = bool | None


@dataclass(frozen=True)
class Check:
    text: str
    answer: Callable[[Rows], Answer]


def mean_of(rows: Rows, where: dict[str, Any], column: str = "score") -> float | None:
    values = matching(rows, where)[column].dropna() if column in rows else pd.Series(dtype=float)
    return float(values.mean()) if len(values) else None


def greater(a: dict[str, Any], b: dict[str, Any], column: str = "score", or_equal: bool = False) -> Callable[[Rows], Answer]:
    """Rows matching ``a`` score above (or level with) rows matching ``b``."""
    def answer(rows: Rows) -> Answer:
        first, second = mean_of(rows, a, column), mean_of(rows, b, column)
        if first is None or second is None:
            return None
        return first >= second if or_equal else first > second
    return answer


def best(where: dict[str, Any], by: str, expected: Any, largest: str | None = None) -> Callable[[Rows], Answer]:
    """Among rows matching ``where`` (and, with ``largest``, at that column's largest scored value), the ``by``
    group with the best mean score is ``expected``; needs two scored groups."""
    def answer(rows: Rows) -> Answer:
        candidates = matching(rows, where).dropna(subset=["score"])
        if largest is not None and len(candidates):
            candidates = candidates[candidates[largest] == candidates[largest].max()]
        means = candidates.groupby(by)["score"].mean()
        return None if len(means) < 2 else means.idxmax() == expected
    return answer


def largest_is_worse(where: dict[str, Any], along: str, column: str) -> Callable[[Rows], Answer]:
    """``column`` at the largest ``along`` value is below its value at the smallest (e.g. throughput vs rank)."""
    def answer(rows: Rows) -> Answer:
        means = matching(rows, where).dropna(subset=[column]).groupby(along)[column].mean()
        return None if len(means) < 2 else bool(means.iloc[-1] < means.iloc[0])
    return answer


def verdict(answer: Answer) -> str:
    return "n.a." if answer is None else ("yes" if answer else "no")
