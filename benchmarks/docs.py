"""Numbers in the docs come from the results files: ``python -m benchmarks.docs`` rewrites every marked table.

A doc marks a generated table with ``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->``; everything between the
markers is replaced by the table (or sentence) that ``TABLES[NAME]`` renders from ``benchmarks/results/<file>.json``
or, for evaluation results saved by ``eval.py output=...``, ``docs/results/<file>.json``. ``--check``
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
from benchmarks.exit_head_variants import table as exit_head_variants_table
from benchmarks.exit_models import table as exit_models_table
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


DOC_RESULTS = ROOT / "docs" / "results"


@dataclass(frozen=True)
class Table:
    doc: str  # path from the repo root
    results: str  # file name in benchmarks/results (or in docs/results, with ``in_docs``)
    render: Callable[[dict], str]  # the results JSON -> a Markdown table or sentence
    in_docs: bool = False  # the results file is in docs/results (an eval.py output), not benchmarks/results
    rows_key: str = "rows"  # the list of result rows in the JSON (tests perturb its first number)

    def results_path(self) -> Path:
        return (DOC_RESULTS if self.in_docs else RESULTS) / self.results


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


# The google/gemma-3-270m model card's pre-trained numbers (Google's own evaluation; metric variant not stated):
# task -> (score, shots), or the reason there is none to compare with.
PUBLISHED: dict[str, tuple[float, str] | str] = {
    "lambada_openai": "not on the card",
    "hellaswag": (0.409, "10-shot"),
    "piqa": (0.677, "0-shot"),
    "winogrande": "no 0-shot PT number found",
    "arc_easy": (0.577, "0-shot"),
    "arc_challenge": "no 0-shot PT number found",
    "openbookqa": "not on the card",
}
ANCHOR_NAMES = {**TASK_NAMES, "lambada_openai": "LAMBADA (openai)"}


def anchor_evals(data: dict) -> list[dict]:
    """One row per task, in the paper's order; HellaSwag from the subset the Avg uses."""
    subset = data["avg"].get("hellaswag_subset", "first")
    rows = {e["task"]: e for e in data["evals"] if e["task"] != "hellaswag" or e.get("subset") == subset}
    return [rows[task] for task in data["avg"]["tasks"]]


def anchor(data: dict) -> str:
    """The original model's scores (an ``eval.py output=`` file) against the model card's published numbers."""
    lines = [
        "| task | metric | ours (n docs) | ± stderr | published (shots) | gap vs 2 stderr |",
        "|---|---|---|---|---|---|",
    ]
    for row in anchor_evals(data):
        docs = f"{row['n']}" + (" = all" if row.get("limit") and row["n"] < row["limit"] else "")
        docs += ", spread" if row.get("subset") == "spread" else ""
        published = PUBLISHED[row["task"]]
        if isinstance(published, str):
            shown, gap = published, "–"
        else:
            value, shots = published
            shown = f"{value:.3f} ({shots})"
            gap = f"{abs(row['value'] - value):.3f} {'<' if abs(row['value'] - value) < 2 * row['stderr'] else '>='} "
            gap += f"{2 * row['stderr']:.3f}"
            if shots != f"{row['num_fewshot']}-shot":
                gap = f"shots differ; {gap} anyway"
        lines.append(
            f"| {ANCHOR_NAMES[row['task']]} | {row['metric']} | {row['value']:.3f} ({docs}) | {row['stderr']:.3f} | "
            f"{shown} | {gap} |"
        )
    lines.append(f"| Avg | mean | {data['avg']['value']:.3f} | {data['avg']['stderr']:.3f} | | |")
    return "\n".join(lines)


def anchor_perplexity(data: dict) -> str:
    row = data["perplexity"][0]
    return (
        f"Perplexity (`{data['perplexity_command']}`): **{row['ppl']:.1f}** on the local held-out corpus "
        f"({row['documents']} documents, {row['tokens']:,} scored tokens, windows of {row['context']} tokens advancing "
        f"{row['stride']})."
    )


def anchor_hellaswag_first(data: dict) -> str:
    (row,) = [e for e in data["evals"] if e["task"] == "hellaswag" and e.get("subset") == "first"]
    return f"HellaSwag's first {row['n']} docs give {row['value']:.3f} ± {row['stderr']:.3f}."


TABLES: dict[str, Table] = {
    "eval_speed": Table("docs/evaluation.md", "eval_speed.json", eval_speed),
    "conversion": Table("docs/conversion.md", "conversion.json", ratio_rows),
    "training": Table("docs/conversion.md", "training.json", ratio_rows),
    "lamda": Table("docs/conversion.md", "lamda.json", lamda_table),
    "simulate": Table("docs/serving.md", "simulate.json", simulate_table),
    "exit_models": Table("docs/serving.md", "exit_models.json", exit_models_table),
    "exit_head_variants": Table("docs/serving.md", "exit_head_variants.json", exit_head_variants_table),
    "serving": Table("docs/serving.md", "serving.json", serving_table),
    "serving_b3": Table("docs/serving.md", "serving_b3.json", serving_table),
    "serving_b3_large": Table("docs/serving.md", "serving_b3_large.json", serving_table),
    "serving_b3_decode": Table("docs/serving.md", "serving_b3_decode.json", serving_table),
    "simulate_trained": Table("docs/serving.md", "simulate_trained.json", simulate_table),
    "anchor": Table("docs/evaluation.md", "gemma3_270m_paper7.json", anchor, in_docs=True, rows_key="evals"),
    "anchor_ppl": Table(
        "docs/evaluation.md", "gemma3_270m_paper7.json", anchor_perplexity, in_docs=True, rows_key="perplexity"
    ),
    "anchor_hellaswag_first": Table(
        "docs/evaluation.md", "gemma3_270m_paper7.json", anchor_hellaswag_first, in_docs=True, rows_key="evals"
    ),
}


def marker(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- results:{name} -->\n).*?(\n<!-- /results:{name} -->)", re.DOTALL)


def rendered(text: str, name: str, table: Table) -> str:
    """``text`` with the ``name`` block replaced by the table its results file gives (the block must exist)."""
    pattern = marker(name)
    if not pattern.search(text):
        raise ValueError(f"{table.doc} has no <!-- results:{name} --> block")
    body = table.render(json.loads(table.results_path().read_text()))
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
