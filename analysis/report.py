"""``python -m analysis.report <run dirs...> --out <dir>``: the paper's tables and figures from run records.

Writes ``report.md`` (every table as Markdown, with its directional checks and notes), one CSV per table and per
check list, ``runs.csv`` (one row per run) and the figures as PNG and PDF (a figure without data is named, with
the reason, not drawn). Corrupt or partial records are listed in the report by path and skipped; they never stop
it. Paths are shown relative to the roots given, never absolute. A root that does not exist is an error (exit
code 2), not an empty report.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from analysis.checks import MIN_TOKENS, Z
from analysis.load import MissingRoot, Runs, load_runs, shown_path, shown_root
from analysis.paper import TABLES as PAPER_FILES
from analysis.paper import provenance
from analysis.tables import PAPER_MODEL, PaperTable, build_all
from rrt.extras import MissingExtraError, require


def markdown(frame: pd.DataFrame) -> str:
    """A frame as a Markdown table: all-empty columns dropped, NaN as blank, 4 significant digits."""
    frame = frame.dropna(axis=1, how="all")
    return frame.astype(object).where(frame.notna(), None).to_markdown(index=False, floatfmt=".4g", missingval="")


def _slug(name: str) -> str:
    return name.replace(".", "").replace(" ", "").lower()


def table_markdown(table: PaperTable, csv: str | None = None) -> str:
    """One table's report section: title, note, checks, the rows, and the paper CSV's provenance."""
    source = provenance(table.name) if table.name in PAPER_FILES else ""
    link = f" Full table: [{csv}]({csv})." if csv else ""
    parts = [
        f"## {table.title}",
        f"*{table.note}.*",
        "",
        "Checks (paper's conclusion vs ours):",
        "",
        markdown(table.checks) if len(table.checks) else "(none)",
        "",
        f"Rows: `paper`, then per model `ours` (mean of `n_runs` complete runs; empty = no run) and `delta` "
        f"(ours - paper).{link}",
        "",
        markdown(table.frame),
        "",
    ]
    if source:
        parts += ["<sub>" + source.replace("\n", "; ") + "</sub>", ""]
    return "\n".join(parts)


def _problems_section(runs: Runs, roots: list[str | Path]) -> str:
    if not runs.problems:
        return "No corrupt or partial records."
    lines = [f"**{len(runs.problems)} record(s) skipped** (corrupt or partial; not counted anywhere):", ""]
    lines += [f"- `{shown_path(path, roots)}`: {reason}" for path, reason in runs.problems]
    return "\n".join(lines)


def _budgets(runs: Runs) -> str:
    """Our complete runs' token budgets, e.g. ``6,144 tokens (6 runs)``."""
    summary = runs.summary()
    budgets = pd.to_numeric(summary.get("token_budget", pd.Series(dtype=float)), errors="coerce")
    counts = budgets.fillna(-1).astype(int).value_counts().sort_index()
    parts = [f"{'unknown' if b < 0 else f'{b:,} tokens'} ({n} run{'s' * (n != 1)})" for b, n in counts.items()]
    return ", ".join(parts) or "none"


def _conclusiveness(runs: Runs, min_tokens: int) -> str:
    return (
        f"**When a check is conclusive.** The `paper` column reads the paper's printed numbers. Ours answers "
        f"`yes` / `no` only when every run compared trained on at least {min_tokens:,} tokens (`--min-tokens`; "
        f"runs that are by design not uptrained are exempt) and the gap exceeds {Z} standard errors (from lm-eval "
        f"stderr, the spread over seeds, or a bootstrap over held-out documents); otherwise `inconclusive`, with "
        f"the reason in `evidence` (gap = the claim's side minus the other, in the score's units). `n.a.`: the "
        f"runs a check needs are missing. Token budgets of our complete runs: {_budgets(runs)}. "
        f'See docs/analysis.md, "What makes a check conclusive".'
    )


def write_report(
    roots: list[str | Path], out: str | Path, paper_model: str | None = PAPER_MODEL, min_tokens: int = MIN_TOKENS
) -> Path:
    """Build everything from the records under ``roots`` into ``out``; returns the report's path. Raises
    MissingRoot for a root that does not exist, MissingExtraError without the [analysis] extra."""
    require(("matplotlib", "tabulate"), "analysis", "python -m analysis.report")
    from analysis.figures import all_figures  # needs matplotlib: imported once it is known to be there

    runs = load_runs(*roots)  # logs a warning per skipped record
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = build_all(runs, paper_model, min_tokens)
    complete = int((runs.runs["status"] == "complete").sum()) if len(runs) else 0
    sections = [
        "# Relaxed Recursive Transformers: our runs vs the paper",
        f"Runs under {', '.join(f'`{shown_root(r)}`' for r in roots)}: {len(runs)} loaded, {complete} complete "
        f"(only complete runs enter the tables). Paper rows: {paper_model or 'all models'} (arXiv 2410.20672v3).",
        "",
        _conclusiveness(runs, min_tokens),
        "",
        _problems_section(runs, roots),
        "",
        "## Runs",
        "",
        "See [runs.csv](runs.csv).",
        "",
    ]
    summary = runs.summary(complete_only=False)
    summary.to_csv(out / "runs.csv", index=False)
    for name, table in tables.items():
        csv = f"table_{_slug(name)}.csv"
        table.frame.to_csv(out / csv, index=False)
        table.checks.to_csv(out / f"checks_{_slug(name)}.csv", index=False)
        sections.append(table_markdown(table, csv))
    sections += ["## Figures", ""]
    figures = all_figures(runs, tables, min_tokens)
    for name in figures.omitted:  # a figure omitted now must not linger from an earlier report in ``out``
        for suffix in (".png", ".pdf"):
            (out / f"{name}{suffix}").unlink(missing_ok=True)
    for name, figure in figures.items():
        figure.savefig(out / f"{name}.png", dpi=120)
        figure.savefig(out / f"{name}.pdf")  # vector, for a paper
        sections += [f"![{name}]({name}.png) ([PDF]({name}.pdf))", ""]
    for name, reason in figures.omitted.items():
        sections += [f"Not drawn: `{name}`: {reason}.", ""]
    path = out / "report.md"
    path.write_text("\n".join(sections))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories or sweep directories (searched for record.json)")
    parser.add_argument("--out", required=True, help="output directory for report.md, CSVs and PNGs")
    parser.add_argument(
        "--paper-model",
        default=PAPER_MODEL,
        help=f"paper rows to compare with (default {PAPER_MODEL!r}; 'all' for every model)",
    )
    parser.add_argument(
        "--min-tokens",
        type=int,
        default=MIN_TOKENS,
        help=f"training tokens a run needs before our checks may answer yes / no (default {MIN_TOKENS:,})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = write_report(
            args.runs, args.out, None if args.paper_model == "all" else args.paper_model, args.min_tokens
        )
    except (MissingRoot, MissingExtraError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(path)


if __name__ == "__main__":
    main()
