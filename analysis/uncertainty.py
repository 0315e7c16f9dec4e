"""Standard errors of what our runs are scored by, from what records hold: lm-eval's per-task ``stderr``, the
held-out documents behind a perplexity (``doc_nll`` / ``doc_tokens``), and repeated runs of one setting (seeds).

A value with no such source has a NaN standard error, and a check built on it cannot be conclusive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

BOOTSTRAP_SAMPLES = 2000  # resamples of the held-out documents; the SE estimate is stable to ~2% at this count
BOOTSTRAP_SEED = 0  # fixed, so a report regenerated from the same records prints the same numbers
PPL_CONSISTENCY = 1e-3  # relative mismatch allowed between a row's ppl and exp(sum doc_nll / sum doc_tokens)


def avg_se(stderrs: pd.Series) -> float:
    """Standard error of the mean of the task scores. The tasks are scored on disjoint documents, so their errors
    are independent: SE = sqrt(sum se_t^2) / n. NaN when any task lacks a stderr."""
    stderrs = pd.to_numeric(stderrs, errors="coerce")
    return float(np.sqrt((stderrs**2).sum(skipna=False))) / len(stderrs) if len(stderrs) else math.nan


def bootstrap_ppl_se(doc_nll: Sequence[float], doc_tokens: Sequence[float], ppl: float) -> float:
    """Bootstrap standard error of a corpus perplexity over its held-out documents.

    ``doc_nll[i]`` is document i's summed negative log-likelihood (nats) over its ``doc_tokens[i]`` scored tokens;
    a resample draws documents with replacement and recomputes exp(sum nll / sum tokens). Lists that do not
    reproduce the row's own ``ppl`` (another convention, e.g. per-token means) give NaN rather than a wrong SE.
    """
    nll, tokens = np.asarray(doc_nll, dtype=float), np.asarray(doc_tokens, dtype=float)
    if len(nll) < 2 or nll.shape != tokens.shape or tokens.sum() <= 0:
        return math.nan
    if not math.isclose(math.exp(nll.sum() / tokens.sum()), ppl, rel_tol=PPL_CONSISTENCY):
        return math.nan
    picks = np.random.default_rng(BOOTSTRAP_SEED).integers(0, len(nll), size=(BOOTSTRAP_SAMPLES, len(nll)))
    return float(np.exp(nll[picks].sum(axis=1) / tokens[picks].sum(axis=1)).std(ddof=1))


def mean_se(values: pd.Series, run_se: pd.Series | None = None) -> float:
    """Standard error of the mean over runs of one setting: the larger of the spread over runs (seeds; needs two)
    and the runs' own measurement error (``run_se``, propagated through the mean). Taking the larger keeps a lucky
    pair of seeds from claiming more certainty than each run's evaluation allows."""
    present = values.notna()
    n = int(present.sum())
    if n == 0:
        return math.nan
    seeds = float(values[present].std(ddof=1)) / math.sqrt(n) if n >= 2 else math.nan
    measured = math.nan
    if run_se is not None:
        errors = pd.to_numeric(run_se[present], errors="coerce")
        measured = float(np.sqrt((errors**2).sum(skipna=False))) / n
    return float(np.nanmax([seeds, measured])) if not (math.isnan(seeds) and math.isnan(measured)) else math.nan
