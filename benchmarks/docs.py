"""Numbers in the docs come from the results files: ``python -m benchmarks.docs`` rewrites every marked table.

A doc marks a generated table with ``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->``; everything between the
markers is replaced by the table that ``TABLES[NAME]`` renders from ``benchmarks/results/<file>.json``. ``--check``
fails (exit 1) when a doc differs from what its results files give, which ``tests/test_docs.py`` runs in CI, so a
re-run benchmark cannot leave a stale number in prose.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmarks.common import RESULTS
from benchmarks.lamda import table as lamda_table
from benchmarks.serving import table as serving_table
from benchmarks.simulate import table as simulate_table

ROOT = Path(__file__).resolve().parents[1]
TASK_NAMES = {
    "lambada_openai": "LAMBADA",
    "hellaswag": "HellaSwag",
    "piqa": "PIQA",
    "winogrande": "WinoGrande",
    "arc_easy": "ARC-easy",
    "arc_challenge": "ARC-challenge",
    "openbookqa": "OpenBookQA",
}


@dataclass(frozen=True)
class Table:
    doc: str  # path from the repo root
    results: str  # file name in benchmarks/results
    render: Callable[[dict], str]  # the results JSON -> a Markdown table


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub table; numbers as formatted here (3 significant digits unless a renderer formatted them)."""
    text = frame.map(lambda v: f"{v:.3g}" if isinstance(v, float) else v)
    return text.to_markdown(index=False, tablefmt="github", disable_numparse=True)


def eval_speed(data: dict) -> str:
    frame = pd.DataFrame(data["rows"])  # the benchmark writes the per-task rows and a "total" row
    return markdown(
        pd.DataFrame(
            {
                "task": frame.task.map(lambda t: TASK_NAMES.get(t, f"**{t}**")),
                "requests": frame.requests,
                "HFLM CPU s": frame.hflm_s.map("{:.1f}".format),
                "rrt CPU s": frame.rrt_s.map("{:.1f}".format),
                "speedup": frame.speedup.map("{:.2f}x".format),
                "max abs diff": frame.max_abs_diff.map("{:.1e}".format),
                "greedy flags equal": frame.greedy_equal.map({True: "yes", False: "no"}),
            }
        )
    )


def ratio_rows(data: dict) -> str:
    """A benchmark's rows as they are (``what`` first), numbers to 3 significant digits."""
    frame = pd.DataFrame(data["rows"]).dropna(axis=1, how="all")
    return markdown(frame[["what", *[c for c in frame if c != "what"]]].astype(object).where(frame.notna(), ""))


TABLES: dict[str, Table] = {
    "eval_speed": Table("docs/evaluation.md", "eval_speed.json", eval_speed),
    "conversion": Table("docs/conversion.md", "conversion.json", ratio_rows),
    "training": Table("docs/conversion.md", "training.json", ratio_rows),
    "lamda": Table("docs/conversion.md", "lamda.json", lamda_table),
    "simulate": Table("docs/serving.md", "simulate.json", simulate_table),
}


def marker(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- results:{name} -->\n).*?(\n<!-- /results:{name} -->)", re.DOTALL)


def rendered(text: str, name: str, table: Table) -> str:
    """``text`` with the ``name`` block replaced by the table its results file gives (the block must exist)."""
    pattern = marker(name)
    if not pattern.search(text):
        raise ValueError(f"{table.doc} has no <!-- results:{name} --> block")
    body = table.render(json.loads((RESULTS / table.results).read_text()))
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def build(check: bool = False) -> list[str]:
    """Rewrite (or, with ``check``, only compare) every doc with marked tables; returns the docs that differ."""
    stale = []
    for doc in sorted({t.doc for t in TABLES.values()}):
        path = ROOT / doc
        before = path.read_text()
        after = before
        for name, table in TABLES.items():
            if table.doc == doc:
                after = rendered(after, name, table)
        if after != before:
            stale.append(doc)
            if not check:
                path.write_text(after)
    return stale


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report docs that differ from the results files")
    args = parser.parse_args(argv)
    stale = build(check=args.check)
    for doc in stale:
        print(f"{doc}: {'differs from' if args.check else 'rewritten from'} benchmarks/results", file=sys.stderr)
    sys.exit(1 if args.check and stale else 0)


if __name__ == "__main__":
    main()
