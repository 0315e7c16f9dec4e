"""The paper's numbers as data: one tidy CSV per table, transcribed from rrt-paper.md (arXiv 2410.20672v3).

Each CSV starts with ``#`` comment lines naming the table and its source section. Columns use this project's
setting names where a table varies a setting (``loops``, ``init``, ``lora_rank``, ``lora_init``, ``early_exit``, ...);
``n_emb`` and ``ntok`` are in billions; task columns are percent; a missing cell is empty (NaN).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
TABLES = {
    "2": "table2.csv",
    "D.1": "table_d1.csv",
    "F.1": "table_f1.csv",
    "G.2": "table_g2.csv",
    "I.1": "table_i1.csv",
    "I.2": "table_i2.csv",
    "3": "table_3.csv",
    "J.1": "table_j1.csv",
    "K.2": "table_k2.csv",
    "Fig. 8": "table_fig8.csv",
}


@cache
def _read(name: str) -> pd.DataFrame:
    if name not in TABLES:
        raise KeyError(f"no paper table {name!r}; known: {', '.join(TABLES)}")
    return pd.read_csv(HERE / TABLES[name], comment="#")


def paper_table(name: str) -> pd.DataFrame:
    """A fresh copy of paper table ``name`` (e.g. ``"F.1"``)."""
    return _read(name).copy()


def provenance(name: str) -> str:
    """The CSV's header comment (table and source), without the ``#`` markers."""
    lines = (HERE / TABLES[name]).read_text().splitlines()
    return "\n".join(line.lstrip("# ") for line in lines if line.startswith("#"))
