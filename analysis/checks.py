"""Directional checks ("does the paper's conclusion hold in our runs?"), computed from a table's rows.

A check reads one source's rows (the paper's, or ours for one model) with a ``score`` column (higher is better),
its standard error ``score_se`` and the rows' ``token_budget``, and answers a :class:`Finding`: ``yes`` / ``no``
only when the difference is conclusive under a :class:`Rule`, ``inconclusive`` when it is not, ``n.a.`` when the
rows it needs are missing or unscored. The paper's rows are read as printed (:data:`PAPER`): its conclusions are
its own, from 15B+ tokens per run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from analysis.matching import matching

Rows = pd.DataFrame
YES, NO, INCONCLUSIVE, NA = "yes", "no", "inconclusive", "n.a."

# The least training a run needs before its ranking is taken as the setting's, not as conversion damage and the
# first optimizer steps. The paper's smallest uptraining budget is 15B tokens for 0.99B non-embedding parameters,
# ~15 tokens per parameter; 1e8 tokens is 2 tokens per parameter for gemma-3-270m's B=2 model (50M), the default
# here: far below the paper's ratio, but past the stage where a converted model is still recovering its loss
# (our 6,144-token runs sit at held-out perplexities in the thousands). Override with --min-tokens.
MIN_TOKENS = 100_000_000
# A difference counts when it exceeds Z standard errors: the two-sided 95% normal interval excludes zero.
Z = 1.96


@dataclass(frozen=True)
class Rule:
    """What makes a difference conclusive: every compared run trained on at least ``min_tokens`` tokens (runs
    that are by design not uptrained, ``token_budget`` 0, are exempt), and the difference exceeds ``z`` standard
    errors. ``None`` drops a requirement."""

    min_tokens: int | None = MIN_TOKENS
    z: float | None = Z


OURS = Rule()
PAPER = Rule(min_tokens=None, z=None)


@dataclass(frozen=True)
class Finding:
    verdict: str
    reason: str = ""


@dataclass(frozen=True)
class Estimate:
    """A group of rows: mean score, its standard error, and the smallest positive token budget behind it
    (``inf``: every row is by design not uptrained; NaN: some row's budget is unknown)."""

    mean: float
    se: float
    tokens: float


@dataclass(frozen=True)
class Check:
    text: str
    answer: Callable[[Rows, Rule], Finding]
    scored_by: str | None = None  # the column compared when it is not the table's score (e.g. throughput)


def estimate(rows: Rows, where: dict[str, Any], column: str = "score") -> Estimate | None:
    """The rows matching ``where`` that have a ``column`` value, pooled: mean, SE of the mean, token budget."""
    if column not in rows:
        return None
    group = matching(rows, where).dropna(subset=[column])
    if group.empty:
        return None
    se = group[f"{column}_se"] if f"{column}_se" in group else pd.Series(math.nan, index=group.index)
    pooled_se = math.sqrt(float((se.astype(float) ** 2).sum(skipna=False))) / len(group)
    return Estimate(float(group[column].mean()), pooled_se, _tokens(group))


def _tokens(group: Rows) -> float:
    budget = pd.to_numeric(group.get("token_budget", pd.Series(math.nan, index=group.index)), errors="coerce")
    if budget.isna().any():
        return math.nan
    positive = budget[budget > 0]
    return float(positive.min()) if len(positive) else math.inf


def _shown(value: float, sign: str = "") -> str:
    """9,944 / 0.21: whole numbers with separators once the fraction no longer matters (``sign="+"``: signed)."""
    return f"{value:{sign},.0f}" if abs(value) >= 100 else f"{value:{sign}.3g}"


def compare(first: Estimate, second: Estimate, rule: Rule, or_equal: bool = False) -> Finding:
    """Is ``first`` above (``or_equal``: not below) ``second``? yes / no only when ``rule`` finds it conclusive;
    the reason's gap is first - second in score units (positive: as claimed)."""
    gap = first.mean - second.mean
    shown_gap = _shown(gap, "+")
    tokens = (
        min(first.tokens, second.tokens) if not (math.isnan(first.tokens) or math.isnan(second.tokens)) else math.nan
    )
    if rule.min_tokens is not None and not tokens >= rule.min_tokens:
        shown = "unknown" if math.isnan(tokens) else f"{tokens:,.0f}"
        return Finding(INCONCLUSIVE, f"gap {shown_gap}; token budget {shown} < minimum {rule.min_tokens:,}")
    if rule.z is not None:
        margin = rule.z * math.hypot(first.se, second.se)
        if math.isnan(margin):
            return Finding(
                INCONCLUSIVE, f"gap {shown_gap} without an uncertainty (one run, no stderr or per-document values)"
            )
        if abs(gap) <= margin:
            return Finding(INCONCLUSIVE, f"gap {shown_gap} within ±{_shown(margin)} ({rule.z} SE)")
        return Finding(YES if gap > 0 else NO, f"gap {shown_gap} beyond ±{_shown(margin)} ({rule.z} SE)")
    return Finding(YES if gap > 0 or (or_equal and gap == 0) else NO, f"gap {shown_gap}")


def greater(
    a: dict[str, Any], b: dict[str, Any], column: str = "score", or_equal: bool = False
) -> Callable[[Rows, Rule], Finding]:
    """Rows matching ``a`` score above (or level with) rows matching ``b``."""

    def answer(rows: Rows, rule: Rule) -> Finding:
        first, second = estimate(rows, a, column), estimate(rows, b, column)
        if first is None or second is None:
            return Finding(NA, "no scored rows for " + ("either side" if first is second else "one side"))
        return compare(first, second, rule, or_equal)

    return answer


def best(where: dict[str, Any], by: str, expected: Any, largest: str | None = None) -> Callable[[Rows, Rule], Finding]:
    """Among rows matching ``where`` (and, with ``largest``, at that column's largest scored value), the ``by``
    group ``expected`` beats every other group: yes when conclusively above each, no when some group is
    conclusively above it; needs ``expected`` and one more scored group."""

    def answer(rows: Rows, rule: Rule) -> Finding:
        candidates = matching(rows, where).dropna(subset=["score"])
        if largest is not None and len(candidates):
            candidates = candidates[candidates[largest] == candidates[largest].max()]
        groups = {name: estimate(group, {}) for name, group in candidates.groupby(by)}
        if expected not in groups or len(groups) < 2:
            return Finding(NA, f"needs {expected} and another scored {by}")
        mine = groups.pop(expected)
        found = {name: compare(mine, other, rule) for name, other in groups.items()}
        losing = [name for name, finding in found.items() if finding.verdict == NO]
        if losing:
            return Finding(NO, f"vs {losing[0]}: {found[losing[0]].reason}")
        pending = [name for name, finding in found.items() if finding.verdict != YES]
        name = pending[0] if pending else max(groups, key=lambda other: groups[other].mean)  # else the runner-up
        return Finding(INCONCLUSIVE if pending else YES, f"vs {name}: {found[name].reason}")

    return answer


def greater_at_same(
    a: dict[str, Any], b: dict[str, Any], column: str, same: tuple[str, ...], each: tuple[str, ...] = ()
) -> Callable[[Rows, Rule], Finding]:
    """Like :func:`greater`, but like with like: each ``a`` group (one value of ``same`` + ``each``, e.g. a max
    batch and an exit policy) against the ``b`` rows with the same ``same`` values (e.g. that batch's vanilla
    rows); see :func:`_every` for the verdict."""

    def answer(rows: Rows, rule: Rule) -> Finding:
        if column not in rows:
            return Finding(NA, "no scored rows for either side")
        first, second = (matching(rows, where).dropna(subset=[column]) for where in (a, b))
        findings = []
        for values, group in _groups(first, [*same, *each]):
            at = second[_at(second, dict(zip(same, values)))]
            if len(at):
                label = _label(dict(zip([*same, *each], values)))
                findings.append((label, compare(estimate(group, {}, column), estimate(at, {}, column), rule)))
        if not findings:
            side = "either side" if first.empty and second.empty else "one side"
            return Finding(NA, f"no scored rows for {side}" + _at_same(same))
        return _every(findings)

    return answer


def largest_is_worse(
    where: dict[str, Any], along: str, column: str, same: tuple[str, ...] = ()
) -> Callable[[Rows, Rule], Finding]:
    """``column`` at the largest ``along`` value is below its value at the smallest (e.g. throughput vs rank),
    compared within each group of equal ``same`` values (e.g. max batch and exit policy)."""

    def answer(rows: Rows, rule: Rule) -> Finding:
        candidates = matching(rows, where).dropna(subset=[column]) if column in rows else rows.iloc[0:0]
        findings = []
        for values, group in _groups(candidates, list(same)):
            found = sorted(group[along].unique())
            if len(found) >= 2:
                smallest, largest = (estimate(group, {along: v}, column) for v in (found[0], found[-1]))
                findings.append((_label(dict(zip(same, values))), compare(smallest, largest, rule)))
        if not findings:
            return Finding(NA, f"needs two scored {along} values" + _at_same(same))
        return _every(findings)

    return answer


def _at_same(same: tuple[str, ...]) -> str:
    return f" at the same {', '.join(column.lstrip('_') for column in same)}" if same else ""


def _groups(rows: Rows, by: list[str]) -> list[tuple[tuple[Any, ...], Rows]]:
    """``rows`` split by ``by`` (missing values a group of their own); no ``by``: one group."""
    if not by:
        return [((), rows)]
    for column in by:
        if column not in rows:
            rows = rows.assign(**{column: math.nan})
    return [(key if isinstance(key, tuple) else (key,), group) for key, group in rows.groupby(by, dropna=False)]


def _at(rows: Rows, values: dict[str, Any]) -> pd.Series:
    """Rows whose columns equal ``values`` (a missing value matches a missing value)."""
    mask = pd.Series(True, index=rows.index)
    for column, value in values.items():
        mine = rows[column] if column in rows else pd.Series(math.nan, index=rows.index)
        mask &= mine.isna() if pd.isna(value) else (mine == value)
    return mask


def _label(values: dict[str, Any]) -> str:
    def shown(value: Any) -> str:
        if pd.isna(value):
            return "unknown"
        return f"{value:g}" if isinstance(value, float) else str(value)

    return ", ".join(f"{column.lstrip('_')} {shown(value)}" for column, value in values.items())


def _every(findings: list[tuple[str, Finding]]) -> Finding:
    """One verdict for several like-with-like comparisons: yes / no when every one answers it, else inconclusive
    (some pending, or some yes and some no); the reason names each comparison."""
    verdicts = {finding.verdict for _, finding in findings}
    verdict = next(iter(verdicts)) if len(verdicts) == 1 and verdicts <= {YES, NO} else INCONCLUSIVE
    if len(findings) == 1:
        label, finding = findings[0]
        return Finding(verdict, f"{label}: {finding.reason}" if label else finding.reason)
    return Finding(verdict, "; ".join(f"{label}: {finding.verdict}, {finding.reason}" for label, finding in findings))
