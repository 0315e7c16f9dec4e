"""The paper's figures in its style: Fig. 4/5 (score vs N-emb), loss curves per init (our ``metrics``; the paper
prints no loss numbers), Fig. 8 (throughput vs score).

One metric per figure: the paper's points (accuracy) and ours (accuracy where the runs have it, else held-out
perplexity or loss: see ``analysis.columns.BASES``) are separate figures, never two panels that look comparable.
Perplexity is drawn on a log axis. Our points carry 95% error bars (1.96 SE) where seeds or the evaluation give a
standard error, and each title of ours states the token budget behind the points and whether it meets the minimum a
conclusion needs (``analysis.checks.MIN_TOKENS``): a figure must not suggest a ranking the checks would call
inconclusive. A figure without data is not drawn: :func:`all_figures` lists it in ``omitted`` with the reason.

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
    "ppl": "Held-out perplexity, log scale (lower is better)",
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


class Figures(dict):
    """Figure name -> Figure, in display order; ``omitted``: figure name -> why it was not drawn."""

    def __init__(self) -> None:
        super().__init__()
        self.omitted: dict[str, str] = {}

    def add(self, name: str, figure: Figure | str) -> None:
        """A figure, or (a string) the reason there is none."""
        if isinstance(figure, str):
            self.omitted[name] = figure
        else:
            self[name] = figure


METRIC_SLUG = {AVG: "accuracy", "ppl": "perplexity", "val_loss": "val_loss", "loss": "train_loss"}


def _error_bars(se: pd.Series, y: pd.Series, log: bool):
    """95% intervals; on a log axis the lower bar stops short of zero."""
    half = Z * se
    return [half.clip(upper=y * 0.999), half] if log else half


def _scatter(ax: Axes, frame: pd.DataFrame, x: str, y: str, label_ranks: bool = False) -> None:
    """One series per kind; a ``<y>_se`` column draws 95% error bars (1.96 SE); perplexity on a log axis."""
    log = y == "ppl"
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
            yerr = _error_bars(group[f"{y}_se"].fillna(0.0), group[y], log)
            ax.errorbar(group[x], group[y], yerr=yerr, fmt="none", ecolor=color, capsize=3)
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
    if log:
        ax.set_yscale("log")


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


def _finish_ours(ax: Axes, basis: str) -> None:
    ax.set_ylabel(BASIS_LABEL[basis])
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


def paper_accuracy_vs_params(model: str = PAPER_MODEL) -> Figure:
    """Fig. 4/5: the paper's few-shot accuracy vs non-embedding parameters, recursive / relaxed vs the baselines."""
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    _scatter(ax, _paper_points(model), "n_emb", AVG, label_ranks=True)
    ax.set(
        title=f"Paper: {model}, B=2, 15B tokens (Tables F.1, G.2)",
        xlabel="Non-embedding parameters (B)",
        ylabel=BASIS_LABEL[AVG],
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _comparable(summary: pd.DataFrame) -> pd.DataFrame:
    """As in the paper's Fig. 4/5: no KD, no early exit, the smallest uptraining budget (or the runs' only one)."""
    summary = matching(summary.assign(**{TIER: budget_tiers(summary)}), {"distill": "none", "early_exit": "none"})
    summary = summary[summary[TIER].isin([0, ORIGINAL]) | summary[TIER].isna()]
    return summary[~((summary["variant"] == "full") & (summary[TIER] == ORIGINAL))]


def ours_vs_params(runs: Runs, min_tokens: int = MIN_TOKENS) -> Figure | str:
    """Fig. 4/5 for our runs: their score (one metric: the first of ``BASES`` they have) vs non-embedding
    parameters; a string saying why when no complete run has a score."""
    summary = runs.summary()
    basis = _ours_basis(summary)
    if basis is None:
        return "no complete run has a score (accuracy, perplexity or loss)"
    summary = _comparable(summary)
    ours = _ours_points(summary, basis)
    if ours.empty:
        return f"no complete run without KD or early exit has {basis} and a parameter count"
    scale, unit = _unit(ours["n_emb"].max())
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    _scatter(ax, ours.assign(n_emb=ours["n_emb"] * scale), "n_emb", basis, label_ranks=True)
    models = ", ".join(sorted(summary["model"].dropna().unique())) if "model" in summary else "?"
    ax.set(title=f"Ours: {models}\n{budget_caption(summary, min_tokens)}", xlabel=f"Non-embedding parameters ({unit})")
    _finish_ours(ax, basis)
    fig.tight_layout()
    return fig


def loss_curves(runs: Runs, min_tokens: int = MIN_TOKENS) -> Figure | str:
    """Training CE per step of every complete run, coloured by init (the paper's Fig. F.1 shows only curves)."""
    summary = runs.summary().set_index("run")
    metrics = runs.metrics
    column = "ce" if "ce" in metrics else ("loss" if "loss" in metrics else None)
    if column is None or summary.empty or metrics.dropna(subset=[column]).empty:
        return "no complete run has training metrics"
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
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
    ax.set(title=title, xlabel="Step", ylabel=f"Training {'CE' if column == 'ce' else column}")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def paper_throughput_vs_accuracy() -> Figure:
    """Fig. 8: the paper's simulated throughput vs few-shot accuracy, with each engine's speed-up over vanilla."""
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    for _, row in paper_table("Fig. 8").iterrows():
        label = (
            ("vanilla" if row["batching"] == "static" else "vanilla + CSB")
            if pd.isna(row["loops"])
            else ("recursive + CDB" if pd.isna(row["lora_rank"]) else f"relaxed r{int(row['lora_rank'])} + CDB")
        )
        ax.scatter(row["throughput"], row["acc"], s=60, marker="*" if pd.isna(row["loops"]) else "o")
        ax.annotate(
            f"{label} (x{row['speedup_vanilla']:.2f})",
            (row["throughput"], row["acc"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
        )
    ax.set(
        title="Paper Fig. 8: Gemma, simulated A100 throughput", xlabel="Throughput (tokens/s)", ylabel=BASIS_LABEL[AVG]
    )
    ax.margins(x=0.2)  # room for the rightmost point's label
    fig.tight_layout()
    return fig


def ours_throughput(table_k2: PaperTable) -> Figure | str:
    """Fig. 8 for our runs: measured throughput vs their score, one point per measured serving configuration (the
    K.2 table's ours rows; simulated ones are not drawn)."""
    frame, basis = table_k2.frame, table_k2.basis
    ours = frame[(frame["source"] == "ours")].dropna(subset=["measured_tokens_per_s"])
    if ours.empty or basis is None or not ours[basis].notna().any():
        return "no complete run has both a measured throughput and a score"
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    points = ["model", "variant", "lora_rank", "engine", "exit_policy", "max_batch"]
    for _, row in ours.dropna(subset=[basis]).drop_duplicates([c for c in points if c in ours]).iterrows():
        ax.scatter(row["measured_tokens_per_s"], row[basis], s=60)
        policy = row.get("exit_policy")
        policy = f" {policy}" if isinstance(policy, str) and policy != "none" else ""
        batch = f", batch {row['max_batch']:g}" if pd.notna(row.get("max_batch")) else ""
        ax.annotate(
            f"{kind(row)} + {row['engine']}{policy}{batch} (x{row['measured_speedup_vs_vanilla']:.2f})",
            (row["measured_tokens_per_s"], row[basis]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
        )
    if basis == "ppl":
        ax.set_yscale("log")
    ax.set(title="Ours: measured throughput", xlabel="Measured throughput (tokens/s)", ylabel=BASIS_LABEL[basis])
    ax.margins(x=0.2)
    fig.tight_layout()
    return fig


def all_figures(runs: Runs, tables: dict[str, PaperTable], min_tokens: int = MIN_TOKENS) -> Figures:
    """Every figure, paper and ours apart; those without data are in ``.omitted`` with the reason."""
    figures = Figures()
    basis = _ours_basis(runs.summary())
    metric = METRIC_SLUG.get(basis, "score")
    figures.add("paper_accuracy_vs_params", paper_accuracy_vs_params())
    figures.add(f"ours_{metric}_vs_params", ours_vs_params(runs, min_tokens))
    figures.add("loss_curves", loss_curves(runs, min_tokens))
    figures.add("paper_throughput_vs_accuracy", paper_throughput_vs_accuracy())
    k2_metric = METRIC_SLUG.get(tables["K.2"].basis or basis, "score")
    figures.add(f"ours_throughput_vs_{k2_metric}", ours_throughput(tables["K.2"]))
    return figures
