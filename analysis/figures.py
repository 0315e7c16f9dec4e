"""The paper's figures in its style, paper points beside ours: Fig. 4/5 (accuracy vs N-emb), loss curves per
init (our ``metrics``; the paper prints no loss numbers), Fig. 8 (throughput vs accuracy).

Our points carry their standard errors as error bars where the runs give one, and our panel's title states the
token budget behind them and whether it meets the minimum a conclusion needs (``analysis.checks.MIN_TOKENS``): a
figure must not suggest a ranking the checks would call inconclusive.

Figures are plain ``matplotlib.figure.Figure`` objects (no pyplot state): ``savefig`` renders them with Agg,
headless, and a notebook shows them with ``display(figure)``.
"""

from __future__ import annotations

import pandas as pd

from rrt.extras import missing_extra

try:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
except ImportError as error:  # matplotlib is the [analysis] extra
    raise missing_extra(["matplotlib"], "analysis", "analysis.figures") from error

from analysis.checks import MIN_TOKENS, Z
from analysis.columns import AVG, BASES
from analysis.load import Runs
from analysis.matching import ORIGINAL, TIER, budget_tiers, matching, paper_setting
from analysis.paper import paper_table
from analysis.tables import PAPER_MODEL, PaperTable
from analysis.uncertainty import mean_se

INIT_COLORS = {
    "stepwise": "tab:blue",
    "average": "tab:orange",
    "lower": "tab:green",
    "upper": "tab:olive",
    "random": "tab:gray",
}
BASELINE_STYLE = {
    "full-size": dict(marker="*", color="black", s=160),
    "reduced-size": dict(marker="s", color="tab:red", s=70),
}
BASIS_LABEL = {
    AVG: "Few-shot accuracy, Avg of 7 tasks (%)",
    "ppl": "Held-out perplexity (lower is better)",
    "val_loss": "Final validation CE (lower is better)",
    "loss": "Final training CE (lower is better)",
}


def kind(row: pd.Series) -> str:
    """Legend label of a run or paper row: baseline, or recursive / relaxed with its init."""
    variant = row.get("variant")
    if variant == "full":
        return "full-size"
    if variant == "reduced":
        return "reduced-size"
    rank = row.get("lora_rank")
    if pd.notna(rank) and rank > 0:
        return f"relaxed ({row.get('init')}, {row.get('lora_init', 'svd')})"
    return f"recursive ({row.get('init')})"


def _scatter(ax: Axes, frame: pd.DataFrame, x: str, y: str, label_ranks: bool = False) -> None:
    """One series per kind; a ``<y>_se`` column draws 95% error bars (1.96 SE)."""
    for label, group in frame.groupby(frame.apply(kind, axis=1), sort=True):
        group = group.sort_values(x)
        if label in BASELINE_STYLE:
            ax.scatter(group[x], group[y], label=label, zorder=3, **BASELINE_STYLE[label])
            color = BASELINE_STYLE[label]["color"]
        else:
            init = label.split("(")[1].split(",")[0].rstrip(")")
            marker = "o" if label.startswith("recursive") else ("v" if label.endswith("zero)") else "^")
            color = INIT_COLORS.get(init, "tab:purple")
            line = "-" if label.startswith("relaxed") and len(group) > 1 else ""
            ax.plot(group[x], group[y], line, label=label, markersize=7, color=color, marker=marker)
        if f"{y}_se" in group and group[f"{y}_se"].notna().any():
            ax.errorbar(group[x], group[y], yerr=Z * group[f"{y}_se"], fmt="none", ecolor=color, capsize=3)
        if label_ranks and "lora_rank" in group:
            for _, point in group.dropna(subset=["lora_rank"]).iterrows():
                if point["lora_rank"] > 0:
                    ax.annotate(
                        f"r{int(point['lora_rank'])}",
                        (point[x], point[y]),
                        textcoords="offset points",
                        xytext=(4, 4),
                        fontsize=7,
                    )


def _paper_points(model: str) -> pd.DataFrame:
    """Fig. 5 / 7 data: F.1 (baselines, strict recursion per init) + G.2 relaxed rows, B=2, 15B."""
    frames = []
    for name in ("F.1", "G.2"):
        paper = paper_table(name)
        paper = paper[paper["model"] == model]
        full = paper[(paper["pt"] == True) & paper["loops"].isna()]["n_emb"].max()  # noqa: E712
        settings = pd.DataFrame([paper_setting(row, full) for _, row in paper.iterrows()], index=paper.index)
        frames.append(pd.concat([paper[["n_emb", AVG]], settings], axis=1))
    points = pd.concat(frames).drop_duplicates()
    keep = (points["variant"] != "recursive") | ((points["loops"] == 2) & (points["pretrained"] == True))  # noqa: E712
    return points[keep & ~((points["variant"] == "reduced") & (points["loops"] != 2))]


def _unit(largest_billions: float) -> tuple[float, str]:
    """A readable unit for parameter counts given in billions (our tiny models have thousands)."""
    for scale, unit in ((1.0, "B"), (1e3, "M"), (1e6, "K")):
        if largest_billions * scale >= 1:
            return scale, unit
    return 1e9, ""


def _ours_basis(summary: pd.DataFrame) -> str | None:
    return next((b for b in BASES if b in summary and summary[b].notna().any()), None)


def _finish_ours(ax: Axes, basis: str | None) -> None:
    if basis is None:
        ax.text(0.5, 0.5, "no complete runs with scores", ha="center", va="center", transform=ax.transAxes)
        return
    ax.set_ylabel(BASIS_LABEL[basis])
    if not BASES[basis]:
        ax.invert_yaxis()  # better is up, as in the paper's panels
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _count(tokens: float) -> str:
    """6144 -> 6.1K, 2e8 -> 200M: a token count short enough for a title."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if tokens >= scale:
            return f"{tokens / scale:.3g}{unit}"
    return f"{tokens:.0f}"


def budget_caption(summary: pd.DataFrame, min_tokens: int = MIN_TOKENS) -> str:
    """The training tokens behind our points, and whether they are enough for a conclusion."""
    budgets = pd.to_numeric(summary.get("token_budget", pd.Series(dtype=float)), errors="coerce")
    budgets = budgets[budgets > 0]
    if budgets.empty:
        return "training tokens unknown: no conclusion"
    low, high = budgets.min(), budgets.max()
    shown = _count(low) if low == high else f"{_count(low)}-{_count(high)}"
    if low < min_tokens:
        return f"{shown} tokens per run: below the {_count(min_tokens)} minimum, no conclusion"
    return f"{shown} tokens per run (minimum for a conclusion: {_count(min_tokens)})"


def _ours_points(summary: pd.DataFrame, basis: str) -> pd.DataFrame:
    """Our runs grouped by setting: mean N-emb and score, and the score's standard error."""
    keys = [c for c in ("model", "variant", "loops", "init", "lora_rank", "lora_init") if c in summary]
    grouped = summary.dropna(subset=[basis, "n_emb"]).groupby(keys, dropna=False)
    points = grouped[["n_emb", basis]].mean()
    points[f"{basis}_se"] = [mean_se(group[basis], group.get(f"{basis}_se")) for _, group in grouped]  # same order
    return points.reset_index()


def accuracy_vs_params(runs: Runs, model: str = PAPER_MODEL, min_tokens: int = MIN_TOKENS) -> Figure:
    """Fig. 4/5 style: score vs non-embedding parameters, recursive / relaxed vs full-size and reduced-size."""
    fig = Figure(figsize=(12, 4.5))
    left, right = fig.subplots(1, 2)
    _scatter(left, _paper_points(model), "n_emb", AVG, label_ranks=True)
    left.set(
        title=f"Paper: {model}, B=2, 15B tokens (Tables F.1, G.2)",
        xlabel="Non-embedding parameters (B)",
        ylabel=BASIS_LABEL[AVG],
    )
    left.legend(fontsize=7)
    summary = runs.summary()
    basis = _ours_basis(summary)
    if basis is not None:
        # as in the paper's panel: no KD, no early exit, the smallest uptraining budget (or the runs' only one)
        summary = matching(summary.assign(**{TIER: budget_tiers(summary)}), {"distill": "none", "early_exit": "none"})
        summary = summary[summary[TIER].isin([0, ORIGINAL]) | summary[TIER].isna()]
        summary = summary[~((summary["variant"] == "full") & (summary[TIER] == ORIGINAL))]
        ours = _ours_points(summary, basis)
        scale, unit = _unit(ours["n_emb"].max() if len(ours) else 1.0)
        _scatter(right, ours.assign(n_emb=ours["n_emb"] * scale), "n_emb", basis, label_ranks=True)
    models = ", ".join(sorted(summary["model"].dropna().unique())) if "model" in summary else ""
    title = f"Ours: {models}\n{budget_caption(summary, min_tokens)}" if models else "Ours: no runs"
    right.set(title=title, xlabel=f"Non-embedding parameters ({unit if basis else 'B'})")
    _finish_ours(right, basis)
    fig.tight_layout()
    return fig


def loss_curves(runs: Runs, min_tokens: int = MIN_TOKENS) -> Figure:
    """Training CE per step of every complete run, coloured by init (the paper's Fig. F.1 shows only curves)."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    summary = runs.summary().set_index("run")
    metrics = runs.metrics
    column = "ce" if "ce" in metrics else ("loss" if "loss" in metrics else None)
    if column is None or summary.empty:
        ax.text(0.5, 0.5, "no training metrics in the runs", ha="center", va="center", transform=ax.transAxes)
        return fig
    for run, curve in metrics.dropna(subset=[column]).groupby("run"):
        if run not in summary.index:
            continue
        setting = summary.loc[run]
        curve = curve.sort_values("step")
        baseline = {"full": "black", "reduced": "tab:red"}.get(setting.get("variant"))
        color = baseline or INIT_COLORS.get(setting.get("init"), "tab:purple")
        style = "--" if pd.notna(setting.get("lora_rank")) and setting.get("lora_rank", 0) > 0 else "-"
        ax.plot(curve["step"], curve[column], style, color=color, label=kind(setting), linewidth=1.2)
    title = f"Ours: training loss per init (dashed: relaxed)\n{budget_caption(summary, min_tokens)}"
    ax.set(title=title, xlabel="Step", ylabel=f"Training {column}")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def throughput_vs_accuracy(table_k2: PaperTable) -> Figure:
    """Fig. 8 style: throughput vs final accuracy; paper from Fig. 8's rows, ours from the K.2 table's ours rows."""
    fig = Figure(figsize=(12, 4.5))
    left, right = fig.subplots(1, 2)
    paper = paper_table("Fig. 8")
    for _, row in paper.iterrows():
        label = (
            ("vanilla" if row["batching"] == "static" else "vanilla + CSB")
            if pd.isna(row["loops"])
            else ("recursive + CDB" if pd.isna(row["lora_rank"]) else f"relaxed r{int(row['lora_rank'])} + CDB")
        )
        left.scatter(row["throughput"], row["acc"], s=60, marker="*" if pd.isna(row["loops"]) else "o")
        left.annotate(
            f"{label} (x{row['speedup_vanilla']:.2f})",
            (row["throughput"], row["acc"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
        )
    left.set(
        title="Paper Fig. 8: Gemma, simulated A100 throughput", xlabel="Throughput (tokens/s)", ylabel=BASIS_LABEL[AVG]
    )
    frame = table_k2.frame
    ours = frame[(frame["source"] == "ours")].dropna(subset=["throughput"])
    basis = table_k2.basis
    if not ours.empty and basis is not None and ours[basis].notna().any():
        for _, row in (
            ours.dropna(subset=[basis]).drop_duplicates(["model", "variant", "lora_rank", "engine"]).iterrows()
        ):
            right.scatter(row["throughput"], row[basis], s=60)
            right.annotate(
                f"{kind(row)} + {row['engine']} (x{row['speedup_vanilla']:.2f})",
                (row["throughput"], row[basis]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
        right.set_ylabel(BASIS_LABEL[basis])
        if not BASES[basis]:
            right.invert_yaxis()
    else:
        right.text(0.5, 0.5, "no runs with throughput and scores", ha="center", va="center", transform=right.transAxes)
    right.set(title="Ours: measured throughput", xlabel="Throughput (tokens/s)")
    fig.tight_layout()
    return fig


def all_figures(runs: Runs, tables: dict[str, PaperTable], min_tokens: int = MIN_TOKENS) -> dict[str, Figure]:
    return {
        "accuracy_vs_params": accuracy_vs_params(runs, min_tokens=min_tokens),
        "loss_curves": loss_curves(runs, min_tokens),
        "throughput_vs_accuracy": throughput_vs_accuracy(tables["K.2"]),
    }
