"""Analysis: records -> tidy frames -> the paper's tables, checks, figures and the report.

``records_root`` is the fixture every shape / robustness test reads; today it is the synthetic sweep below
(known scores, so the checks' answers are exact). To run the same tests on real runs, make ``records_root``
return a directory of real tiny training runs (the synthetic-value tests keep using ``synthetic_root``).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import build_all, load_runs, paper_table
from analysis.columns import TASK_COLUMNS, TASKS
from analysis.figures import all_figures
from analysis.paper import TABLES, provenance
from analysis.report import main, write_report
from rrt.records import RunRecord
from tests.helpers import ROOT

OFFSETS = [-3, -2, -1, 0, 1, 2, 3]  # per-task spread around a run's Avg (sums to zero, so Avg is exact)

POST = dict(early_exit_phase="post", early_exit_data="overlap")  # early-exit post-training on the uptraining data
BUDGET, LONGER = 200_000_000, 800_000_000  # above analysis.checks.MIN_TOKENS, so the checks can be conclusive
# (run name, setting, Avg in percent); chosen so that every paper conclusion holds except "SVD beats zero init".
SWEEP = [
    ("full-original", dict(variant="full", token_budget=0), 60.0),
    ("full-15", dict(variant="full", token_budget=BUDGET), 58.0),
    ("full-60", dict(variant="full", token_budget=LONGER), 57.0),
    ("reduced", dict(variant="reduced", loops=2, init="random", pretrained=False), 35.0),
    ("step", dict(init="stepwise"), 50.0),
    ("avg", dict(init="average"), 46.0),
    ("lower", dict(init="lower"), 47.0),
    ("random", dict(init="random", pretrained=False), 36.0),
    ("step-r512", dict(init="stepwise", lora_rank=512, lora_init="svd"), 49.0),
    ("avg-r64", dict(init="average", lora_rank=64, lora_init="svd"), 51.0),
    ("avg-r512", dict(init="average", lora_rank=512, lora_init="svd"), 54.0),
    ("avg-r512-zero", dict(init="average", lora_rank=512, lora_init="zero"), 55.0),
    ("lower-r512", dict(init="lower", lora_rank=512, lora_init="svd"), 52.0),
    ("step-60", dict(init="stepwise", token_budget=LONGER), 51.0),
    ("step-fkl", dict(init="stepwise", distill="forward_kl"), 52.0),
    ("step-rkl", dict(init="stepwise", distill="reverse_kl"), 51.5),
    ("ee-agg", dict(init="stepwise", early_exit="aggressive", early_exit_coef=0.1, **POST), 50.5),
    ("ee-weighted", dict(init="stepwise", early_exit="weighted", **POST), 49.0),
]
BASE_SETTING = dict(
    model="gemma3_270m",
    variant="recursive",
    loops=2,
    looping="cycle",
    init="stepwise",
    lora_rank=0,
    lora_init="svd",
    distill="none",
    early_exit="none",
    early_exit_kd=False,
    token_budget=BUDGET,
    pretrained=True,
)
N_EMB = {"full": 100e6, "reduced": 50e6}
THROUGHPUT = {"full-15": {"vanilla": 100.0, "csb": 150.0}, "ee-agg": {"cdb": 260.0}}


def evals(avg: float, exit_loop: int | None, stderr: float = 0.002) -> list[dict]:
    """The seven tasks at ``avg`` percent; the default stderr gives Avg a standard error of 0.076 points."""
    return [
        {
            "task": TASKS[c][0],
            "metric": TASKS[c][1],
            "value": (avg + o) / 100,
            "stderr": stderr,
            "n": 100,
            "num_fewshot": 0,
            "exit_loop": exit_loop,
            "limit": 100,
        }
        for c, o in zip(TASK_COLUMNS, OFFSETS)
    ]


def perplexity(ppl: float, exit_loop: int | None, spread: float = 0.01, documents: int = 20) -> dict:
    """A held-out perplexity row with per-document NLLs (100 tokens each, per-token NLL log(ppl) +- spread)."""
    nll = [100 * (math.log(ppl) + (spread if i % 2 else -spread)) for i in range(documents)]
    return {"dataset": "heldout", "exit_loop": exit_loop, "ppl": ppl, "doc_nll": nll, "doc_tokens": [100] * documents}


def write_sweep(root: Path, with_evals: bool = True) -> Path:
    """The synthetic sweep plus one truncated, one partial and one still-running record."""
    for name, overrides, avg in SWEEP:
        setting = {**BASE_SETTING, **overrides}
        rank = setting["lora_rank"]
        record = RunRecord.create(
            root / name,
            setting=setting,
            status="complete",
            params={"non_embedding": N_EMB.get(setting["variant"], 50e6 + rank * 1e4)},
            budget={"tokens": setting["token_budget"], "steps": 4},
        )
        record.append(
            "metrics",
            [
                {"step": s, "tokens": 1024 * s, "loss": 10 - avg / 10 + 1 / s, "ce": 10 - avg / 10 + 1 / s}
                for s in range(1, 5)
            ],
        )
        record.append("perplexity", perplexity(round(200 / avg, 4), None))
        if with_evals:
            record.append("evals", evals(avg, None))
        if name.startswith("ee-"):
            record.append(
                "evals" if with_evals else "perplexity",
                evals(avg - 6, 1) if with_evals else perplexity(200 / (avg - 6), 1),
            )
        record.append("throughput", [{"engine": e, "tokens_per_s": v} for e, v in THROUGHPUT.get(name, {}).items()])
    (root / "truncated").mkdir()
    (root / "truncated" / "record.json").write_text(json.dumps({"schema": 1, "run_id": "truncated"})[:-7])
    (root / "partial").mkdir()
    (root / "partial" / "record.json").write_text(json.dumps({"schema": 1, "run_id": "partial", "status": "complete"}))
    RunRecord.create(root / "still-running", setting={**BASE_SETTING, "init": "upper"}).append(
        "evals", evals(99.0, None)
    )
    return root


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return write_sweep(tmp_path_factory.mktemp("sweep"))


TRAIN = [sys.executable, "train.py", "-m", "model=tiny_llama", "budget=tiny", "trainer=cpu", "logger=csv"]
REAL_SWEEPS = {  # one `train.py -m` per group: 8 tiny runs covering F.1's rows and a relaxed pair
    "init": ["init=stepwise,average,lower,random"],
    "full": ["variant=full"],
    "reduced": ["variant=reduced", "init=random"],
    "relaxed": ["init=average,stepwise", "lora.rank=8"],
}


@pytest.fixture(scope="module")
def real_runs_root(tmp_path_factory) -> Path:
    """Real tiny training runs (tiny random llama, 8 steps each; minutes on a CPU)."""
    root = tmp_path_factory.mktemp("real")
    for name, overrides in REAL_SWEEPS.items():
        done = subprocess.run(
            [*TRAIN, *overrides, f"hydra.sweep.dir={root / name}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def records_root(synthetic_root) -> Path:
    """Switch this to ``real_runs_root`` to run the shape / robustness tests on real records."""
    return synthetic_root


@pytest.fixture(scope="module")
def runs(records_root):
    return load_runs(records_root)


@pytest.fixture(scope="module")
def tables(runs):
    return build_all(runs)


# --- the paper's numbers -------------------------------------------------------------------------------------------

ROW_COUNTS = {"2": 9, "D.1": 7, "F.1": 23, "G.2": 60, "I.1": 12, "I.2": 47, "3": 9, "J.1": 22, "K.2": 42, "Fig. 8": 7}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_paper_table_is_transcribed_whole_with_provenance(name):
    assert len(paper_table(name)) == ROW_COUNTS[name]
    header = provenance(name)
    assert "rrt-paper.md §1." in header and "arXiv 2410.20672v3" in header


@pytest.mark.parametrize("name", [n for n in sorted(TABLES) if "Avg" in paper_table(n) and "LD" in paper_table(n)])
def test_paper_avg_is_the_mean_of_the_seven_tasks(name):
    table = paper_table(name)
    error = (table[TASK_COLUMNS].mean(axis=1) - table["Avg"]).abs()
    assert error.max() <= 0.1, table.loc[error > 0.1]


def test_fig8_is_the_mean_throughput_of_k2():
    k2 = paper_table("K.2")
    gemma = k2[
        (k2["model"] == "Gemma 2B") & k2["loops"].isin([2]) & (k2["early_exit_coef"] == 0.1)
        | (k2["model"] == "Gemma 2B") & k2["loops"].isna()
    ]
    thr = gemma[["thr_slimpajama", "thr_redpajama", "thr_pg19"]].mean(axis=1).to_numpy()
    fig8 = paper_table("Fig. 8")
    assert np.abs(thr - fig8["throughput"].to_numpy()).max() < 1  # the paper truncates some means (2149.67 -> 2149)
    assert gemma["acc_last"].tolist() == fig8["acc"].tolist()


def test_paper_spot_values():
    f1 = paper_table("F.1").set_index(["model", "loops", "init"])
    assert f1.loc[("Gemma 2B", 2.0, "stepwise"), "Avg"] == 51.7
    assert f1.loc[("Gemma 2B", 2.0, "random"), "pt"] == False  # noqa: E712
    j1 = paper_table("J.1")
    agg = j1[
        (j1["early_exit"] == "aggressive")
        & (j1["early_exit_coef"] == 0.1)
        & j1["early_exit_kd"]
        & (j1["output"] == "loop1")
    ]
    assert agg["Avg"].tolist() == [48.0]


# --- loading -------------------------------------------------------------------------------------------------------


def test_load_reports_and_skips_corrupt_records(runs, records_root):
    assert {Path(p).parent.name for p, _ in runs.problems} == {"truncated", "partial"}
    assert not runs.runs["run"].isin(["truncated", "partial"]).any()
    assert len(runs.runs) == len(runs.runs["run"].unique())


def test_summary_scores_in_percent_and_final_exit(synthetic_root):
    runs = load_runs(synthetic_root)
    assert len(runs) == len(SWEEP) + 1  # + the running one
    summary = runs.summary().set_index("run")
    assert "still-running" not in summary.index  # only complete runs by default
    assert summary.loc["avg-r512", "Avg"] == pytest.approx(54.0)
    assert summary.loc["avg-r512", "LD"] == pytest.approx(51.0)
    assert summary.loc["avg-r512", "ppl"] == pytest.approx(200 / 54, abs=1e-4)
    assert summary.loc["avg-r512", "loss"] == pytest.approx(10 - 5.4 + 1 / 4)
    assert summary.loc["ee-agg", "Avg"] == pytest.approx(50.5)  # the final exit, not loop 1
    assert runs.summary(exit_loop=1).set_index("run").loc["ee-agg", "Avg"] == pytest.approx(44.5)
    configurations = runs.configurations().set_index(["run", "engine"])
    assert configurations.loc[("full-15", "csb"), "measured_tokens_per_s"] == 150.0
    assert not any(c.startswith("thr:") for c in summary)  # no one-number-per-engine throughput (see K.2)
    assert runs.summary(complete_only=False)["run"].isin(["still-running"]).any()


def test_final_exit_is_the_runs_last_loop(tmp_path):
    """As eval.py writes them: every row names its exit loop; a run evaluated only at loop 1 has no final score."""
    both = RunRecord.create(tmp_path / "both", setting=dict(BASE_SETTING), status="complete")
    both.append("evals", evals(50.0, 2) + evals(40.0, 1))
    RunRecord.create(tmp_path / "loop1", setting=dict(BASE_SETTING), status="complete").append("evals", evals(40.0, 1))
    for variant in ("full", "reduced"):  # one loop: eval.py writes their scores at exit loop 1
        RunRecord.create(tmp_path / variant, setting={**BASE_SETTING, "variant": variant}, status="complete").append(
            "evals", evals(30.0, 1)
        )
    summary = load_runs(tmp_path).summary().set_index("run")
    assert summary.loc["both", "Avg"] == pytest.approx(50.0) and math.isnan(summary.loc["loop1", "Avg"])
    assert summary.loc["full", "Avg"] == summary.loc["reduced", "Avg"] == pytest.approx(30.0)


def test_avg_needs_all_seven_tasks(tmp_path):
    record = RunRecord.create(tmp_path / "six", setting=dict(BASE_SETTING), status="complete")
    record.append("evals", evals(50.0, None)[:6])
    summary = load_runs(tmp_path).summary()
    assert math.isnan(summary.loc[0, "Avg"]) and summary.loc[0, "LD"] == pytest.approx(47.0)


def test_runs_are_keyed_by_their_path_below_the_root(tmp_path):
    for sweep in ("sweep_a", "sweep_b"):
        RunRecord.create(tmp_path / sweep / "0", setting=dict(BASE_SETTING), status="complete")
    runs = load_runs(tmp_path).runs
    assert sorted(runs["run"]) == ["sweep_a/0", "sweep_b/0"] and runs["run_id"].tolist() == ["0", "0"]


# --- tables --------------------------------------------------------------------------------------------------------

EXPECTED_CHECKS = {  # ours, on the synthetic sweep
    "2": ["yes"],
    "F.1": ["yes", "yes", "yes", "yes"],
    "G.2": ["yes", "no", "yes"],  # the sweep gives zero init the edge at rank 512
    "I.1": ["yes", "n.a.", "yes"],  # no relaxed KD run
    "J.1": ["yes", "yes", "yes"],
    "K.2": ["inconclusive", "inconclusive", "n.a."],  # one measurement per engine (no spread); no relaxed runs
}


def test_tables_have_paper_ours_delta_rows(tables):
    for name, table in tables.items():
        sources = table.frame["source"].tolist()
        if name == "K.2":  # one ours row per serving configuration, each followed by its delta
            assert re.fullmatch(r"(p(od)+)+", "".join(source[0] for source in sources)), name
        else:
            assert sources == ["paper", "ours", "delta"] * (len(sources) // 3), name
        ours = table.frame[table.frame["source"] == "ours"]
        missing = ours[ours["n_runs"] == 0]
        value_columns = [c for c in ("Avg", "ppl", "loss") if c in ours]
        assert missing[value_columns].isna().all().all(), f"{name}: a setting without runs must be NaN, not 0"


def test_table_values_and_deltas(synthetic_root):
    table = build_all(load_runs(synthetic_root))["F.1"].frame
    step = table[(table["variant"] == "recursive") & (table["loops"] == 2) & (table["init"] == "stepwise")]
    paper, ours, delta = (step[step["source"] == s].iloc[0] for s in ("paper", "ours", "delta"))
    assert (paper["Avg"], ours["Avg"], ours["n_runs"], ours["model"]) == (51.7, 50.0, 1, "gemma3_270m")
    assert delta["Avg"] == pytest.approx(50.0 - 51.7)
    b3 = table[(table["loops"] == 3) & (table["source"] == "ours")]
    assert len(b3) == 5 and b3["Avg"].isna().all() and (b3["n_runs"] == 0).all()


@pytest.mark.parametrize("name", sorted(EXPECTED_CHECKS))
def test_directional_checks(synthetic_root, name):
    checks = build_all(load_runs(synthetic_root))[name].checks
    assert checks["paper"].tolist() == ["yes"] * len(checks)
    assert checks["ours (gemma3_270m)"].tolist() == EXPECTED_CHECKS[name]


def test_fallback_to_perplexity_without_lm_eval(tmp_path):
    tables = build_all(load_runs(write_sweep(tmp_path, with_evals=False)))
    f1 = tables["F.1"]
    assert f1.basis == "ppl" and "perplexity" in f1.note
    assert f1.checks["ours (gemma3_270m)"].tolist() == ["yes", "yes", "yes", "yes"]
    assert tables["J.1"].checks["ours (gemma3_270m)"].tolist() == ["yes", "yes", "yes"]  # loop 1 has the worse ppl


def test_no_runs_gives_paper_rows_and_empty_ours(tmp_path):
    tables = build_all(load_runs(tmp_path))
    f1 = tables["F.1"]
    assert f1.basis is None and set(f1.checks["ours ((no runs))"]) == {"n.a."}
    assert f1.frame.loc[f1.frame["source"] == "ours", "n_runs"].eq(0).all()


def test_all_paper_models(runs):
    f1 = build_all(runs, model=None)["F.1"].frame
    assert set(f1.loc[f1["source"] == "paper", "model"]) == {"Gemma 2B", "TinyLlama 1.1B", "Pythia 1B"}


def test_k2_speedup_is_relative_to_our_vanilla(tables):
    k2 = tables["K.2"].frame
    cdb = k2[(k2["source"] == "ours") & (k2["engine"] == "cdb") & (k2["lora_rank"] == 0) & (k2["loops"] == 2)].iloc[0]
    assert (cdb["measured_tokens_per_s"], cdb["measured_speedup_vs_vanilla"]) == (260.0, 2.6)
    assert cdb["throughput_from"] == "measured" and math.isnan(cdb["simulated_speedup_vs_vanilla"])


# --- figures and report --------------------------------------------------------------------------------------------


def test_figures_show_one_metric_each_paper_and_ours_apart(runs, tables):
    figures = all_figures(runs, tables)
    assert list(figures) == [
        "paper_accuracy_vs_params",
        "ours_accuracy_vs_params",
        "loss_curves",
        "paper_throughput_vs_accuracy",
        "ours_throughput_vs_accuracy",
    ]
    assert not figures.omitted
    assert all(len(figure.axes) == 1 for figure in figures.values())  # one metric per figure: no side-by-side panels
    (paper,) = figures["paper_accuracy_vs_params"].axes
    (ours,) = figures["ours_accuracy_vs_params"].axes
    assert paper.get_title().startswith("Paper") and ours.get_title().startswith("Ours: gemma3_270m")
    labels = {t.get_text() for t in ours.get_legend().get_texts()}
    assert {"full-size", "reduced-size", "recursive (stepwise)", "relaxed (average, svd)"} <= labels
    assert ours.collections and any(c.get_segments() for c in ours.collections if hasattr(c, "get_segments"))
    assert len(figures["loss_curves"].axes[0].lines) == len(runs.summary())


def test_perplexity_is_drawn_on_a_log_axis_with_error_bars_and_empty_figures_are_omitted(tmp_path):
    for init, ppl, lora_rank in (("stepwise", 40.0, 0), ("average", 900.0, 0), ("average", 55000.0, 64)):
        setting = {**BASE_SETTING, "init": init, "lora_rank": lora_rank}
        record = RunRecord.create(tmp_path / f"{init}-{lora_rank}", setting=setting, status="complete")
        record.update(
            params={"non_embedding": 50_000_000 + lora_rank, "total": 10**8},
            perplexity=[perplexity(ppl, 2, spread=0.5)],  # a wide spread: bars visible on the log axis
        )
    runs = load_runs(tmp_path)
    figures = all_figures(runs, build_all(runs))
    (ax,) = figures["ours_perplexity_vs_params"].axes
    assert ax.get_yscale() == "log" and not ax.yaxis_inverted() and "log scale" in ax.get_ylabel()
    bars = [c for c in ax.collections if c.get_segments()]
    assert bars and all(min(y for seg in c.get_segments() for _, y in seg) > 0 for c in bars)  # log: above zero
    assert set(figures.omitted) == {"loss_curves", "ours_throughput_vs_perplexity"}
    assert figures.omitted["loss_curves"] == "no complete run has training metrics"


def test_report_writes_tables_figures_and_lists_skipped_records(records_root, tmp_path):
    main([str(records_root), "--out", str(tmp_path / "report")])
    out = tmp_path / "report"
    text = (out / "report.md").read_text()
    for title in ("Table 2", "Table D.1", "Table F.1", "Table G.2", "Table I.1", "Table J.1", "Table K.2"):
        assert f"## {title}" in text
    assert "2 record(s) skipped" in text and f"`{records_root.name}/truncated/record.json`" in text
    assert "| check " in text and "| source " in text
    for name in ("paper_accuracy_vs_params", "ours_accuracy_vs_params", "loss_curves", "ours_throughput_vs_accuracy"):
        assert (out / f"{name}.png").stat().st_size > 10_000
        assert (out / f"{name}.pdf").read_bytes().startswith(b"%PDF")  # vector, beside the PNG
        assert f"![{name}]({name}.png) ([PDF]({name}.pdf))" in text
    f1 = pd.read_csv(out / "table_f1.csv")
    assert len(f1) == 33 and (out / "checks_g2.csv").exists() and (out / "runs.csv").exists()


def test_report_on_an_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    text = write_report([tmp_path / "empty"], tmp_path / "out").read_text()
    assert "0 loaded" in text and "No corrupt or partial records." in text
    assert "Not drawn: `loss_curves`: no complete run has training metrics." in text  # said, not an empty panel
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "paper_accuracy_vs_params.png",
        "paper_throughput_vs_accuracy.png",
    ]


def test_runs_without_budget_or_optional_keys_still_match(tmp_path):
    """Settings that omit keys (no token_budget, distill, early_exit) take the defaults: base budget, none; with
    no token budget on record, no check can be conclusive."""
    for init, avg in (("stepwise", 40.0), ("average", 30.0)):
        RunRecord.create(
            tmp_path / init, setting=dict(model="m", variant="recursive", loops=2, init=init), status="complete"
        ).append("evals", evals(avg, None))
    f1 = build_all(load_runs(tmp_path))["F.1"]
    ours = f1.frame[(f1.frame["source"] == "ours") & (f1.frame["loops"] == 2)].set_index("init")
    assert ours.loc["stepwise", "Avg"] == pytest.approx(40.0) and ours.loc["average", "n_runs"] == 1
    assert f1.checks.loc[0, "ours (m)"] == "inconclusive" and "token budget unknown" in f1.checks.loc[0, "evidence (m)"]


@pytest.mark.slow
def test_real_runs_build_every_table_and_the_report(real_runs_root, tmp_path):
    runs = load_runs(real_runs_root)
    assert not runs.problems and (runs.runs["status"] == "complete").sum() == 8
    tables = build_all(runs)
    f1 = tables["F.1"]
    ours = f1.frame[(f1.frame["source"] == "ours") & (f1.frame["loops"] == 2)]
    # tiny_llama has random weights, so its runs are not pretrained: of F.1's B=2 rows only random init matches
    n_runs = ours.set_index("init")["n_runs"].drop(np.nan, errors="ignore").to_dict()
    assert n_runs == {"stepwise": 0, "average": 0, "lower": 0, "random": 1}
    assert f1.basis == "val_loss" and ours["val_loss"].notna().eq(ours["n_runs"] > 0).all()  # no lm-eval: held-out CE
    assert set(f1.checks["ours (tiny_llama)"]) <= {"inconclusive", "n.a."}  # 1,024-token runs never say yes / no
    text = write_report([real_runs_root], tmp_path).read_text()
    assert "## Table F.1" in text and "validation cross-entropy" in text
