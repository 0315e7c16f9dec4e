"""What the analysis may claim: early-exit rows matched on the phase and data a run records, directional checks
that are conclusive only with enough training and a difference beyond its uncertainty, and reports that survive
real record sets (overlapping roots, clashing run ids, missing roots) without printing machine paths."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import build_all, load_runs
from analysis.figures import ours_vs_params
from analysis.report import main
from analysis.uncertainty import bootstrap_ppl_se
from rrt.records import RunRecord
from tests.helpers import ROOT
from tests.test_analysis import BASE_SETTING, evals, perplexity

ENOUGH, TINY = 200_000_000, 6_144  # above / below analysis.checks.MIN_TOKENS
AGG = dict(init="stepwise", early_exit="aggressive", early_exit_coef=0.1, early_exit_kd=False)


def run(
    root: Path,
    name: str,
    avg: float | None = None,
    ppl: float | None = None,
    stderr: float = 0.002,
    spread: float | None = 0.01,
    **setting,
) -> RunRecord:
    """A complete run scored by lm-eval (``avg``) or by held-out perplexity only (``ppl``; per-document NLLs
    spread around it, or none with ``spread=None``)."""
    record = RunRecord.create(
        root / name, setting={**BASE_SETTING, "token_budget": ENOUGH, **setting}, status="complete"
    )
    if avg is not None:
        record.append("evals", evals(avg, None, stderr))
    if ppl is not None:
        row = (
            perplexity(ppl, None, spread)
            if spread is not None
            else {"dataset": "heldout", "exit_loop": None, "ppl": ppl}
        )
        record.append("perplexity", row)
    return record


def ours(table, model: str = "gemma3_270m") -> pd.DataFrame:
    frame = table.frame
    return frame[(frame["source"] == "ours") & (frame["model"] == model)]


def verdicts(table, model: str = "gemma3_270m") -> list[str]:
    return table.checks[f"ours ({model})"].tolist()


# --- early exit: phase (Post / Co) and data (Overlap / New) -------------------------------------------------------


def _agg_final(table, phase: str, data: str) -> pd.Series:
    """The ours row of J.1's Agg (0.1), no-KD, final-output row with that phase and data."""
    rows = ours(table)
    row = rows[
        (rows["early_exit"] == "aggressive")
        & (rows["early_exit_coef"] == 0.1)
        & (rows["early_exit_kd"] == False)  # noqa: E712
        & (rows["early_exit_phase"] == phase)
        & (rows["early_exit_data"] == data)
        & rows["exit_loop"].isna()
    ]
    assert len(row) == 1
    return row.iloc[0]


def test_co_trained_run_matches_j1_co_row_and_post_runs_match_post_rows(tmp_path):
    run(tmp_path, "co", 40.0, **AGG, early_exit_phase="co", early_exit_data=None)  # as train.py writes a co run
    run(tmp_path, "post", 45.0, **AGG, early_exit_phase="post", early_exit_data="overlap")
    run(tmp_path, "post-new", 47.0, **AGG, early_exit_phase="post", early_exit_data="new")
    run(tmp_path, "unsaid", 60.0, **AGG)  # no phase, no start_from: neither Post nor Co
    j1 = build_all(load_runs(tmp_path))["J.1"]
    co, post, new = _agg_final(j1, "co", "overlap"), _agg_final(j1, "post", "overlap"), _agg_final(j1, "post", "new")
    assert (co["n_runs"], co["Avg"]) == (1, pytest.approx(40.0))
    assert (post["n_runs"], post["Avg"]) == (1, pytest.approx(45.0))
    assert (new["n_runs"], new["Avg"]) == (1, pytest.approx(47.0))
    assert not np.isclose(ours(j1)["Avg"].dropna(), 60.0).any()


def test_phase_of_a_record_without_one_comes_from_start_from_only(tmp_path):
    run(tmp_path, "started", 45.0, **AGG, start_from=str(tmp_path / "uptrained" / "model"), early_exit_data="overlap")
    run(tmp_path, "fresh", 60.0, **AGG, start_from=None, early_exit_data="overlap")
    j1 = build_all(load_runs(tmp_path))["J.1"]
    post = _agg_final(j1, "post", "overlap")
    assert (post["n_runs"], post["Avg"]) == (1, pytest.approx(45.0))
    assert _agg_final(j1, "co", "overlap")["n_runs"] == 0


# --- when a directional check is conclusive ------------------------------------------------------------------------

F1_INIT, F1_REDUCED = 0, 1  # F.1's checks: Stepwise is the best init; recursive beats the reduced-size model


def _f1_runs(root: Path, step: float, average: float, reduced: float, **kwargs) -> Path:
    run(root, "step", step, **kwargs)
    run(root, "average", average, init="average", **kwargs)
    run(root, "reduced", reduced, variant="reduced", init="random", pretrained=False, **kwargs)
    return root


def test_difference_within_its_standard_error_is_inconclusive(tmp_path):
    # stderr 0.05 per task: Avg SE 1.9 points, so 0.5 and 1.0 points apart is noise
    checks = build_all(load_runs(_f1_runs(tmp_path, 50.0, 49.5, 49.0, stderr=0.05)))["F.1"].checks
    assert [checks.loc[i, "ours (gemma3_270m)"] for i in (F1_INIT, F1_REDUCED)] == ["inconclusive", "inconclusive"]
    assert "within" in checks.loc[F1_INIT, "evidence (gemma3_270m)"]


def test_separated_runs_with_enough_budget_answer_yes_or_no(tmp_path):
    f1 = build_all(load_runs(_f1_runs(tmp_path / "a", 50.0, 40.0, 30.0)))["F.1"]
    assert [verdicts(f1)[i] for i in (F1_INIT, F1_REDUCED)] == ["yes", "yes"]
    assert f1.checks.loc[F1_INIT, "evidence (gemma3_270m)"] == "vs average: gap +10 beyond ±0.21 (1.96 SE)"
    f1 = build_all(load_runs(_f1_runs(tmp_path / "b", 40.0, 50.0, 45.0)))["F.1"]
    assert [verdicts(f1)[i] for i in (F1_INIT, F1_REDUCED)] == ["no", "no"]


def test_below_the_minimum_budget_is_inconclusive_even_when_separated(tmp_path):
    root = _f1_runs(tmp_path, 50.0, 40.0, 30.0, token_budget=TINY)
    f1 = build_all(load_runs(root))["F.1"]
    assert [verdicts(f1)[i] for i in (F1_INIT, F1_REDUCED)] == ["inconclusive", "inconclusive"]
    assert "6,144 < minimum 100,000,000" in f1.checks.loc[F1_INIT, "evidence (gemma3_270m)"]
    lowered = build_all(load_runs(root), min_tokens=TINY)["F.1"]  # what --min-tokens does
    assert [verdicts(lowered)[i] for i in (F1_INIT, F1_REDUCED)] == ["yes", "yes"]


def test_figure_states_the_budget_behind_our_points(tmp_path):
    root = _f1_runs(tmp_path, 50.0, 40.0, 30.0, token_budget=TINY)
    assert ours_vs_params(load_runs(root)).startswith("no complete run")  # no parameter counts: omitted, said why
    for record in root.glob("*/record.json"):
        RunRecord.load(record.parent).update(params={"non_embedding": 50_000_000})
    (ours_panel,) = ours_vs_params(load_runs(root)).axes
    assert ours_panel.get_title().endswith("6.14K tokens per run: below the 100M minimum, no conclusion")


def test_perplexity_without_documents_needs_seeds(tmp_path):
    for init, ppl in (("stepwise", 100.0), ("average", 200.0)):
        run(tmp_path / "one", init, ppl=ppl, spread=None, init=init)
        for seed, wobble in enumerate((0.0, 2.0)):
            run(tmp_path / "seeds", f"{init}-{seed}", ppl=ppl + wobble, spread=None, init=init, seed=seed)
    single = build_all(load_runs(tmp_path / "one"))["F.1"]
    assert single.basis == "ppl" and verdicts(single)[F1_INIT] == "inconclusive"
    assert "without an uncertainty" in single.checks.loc[F1_INIT, "evidence (gemma3_270m)"]
    seeds = build_all(load_runs(tmp_path / "seeds"))["F.1"]
    assert verdicts(seeds)[F1_INIT] == "yes"
    b2 = ours(seeds)[ours(seeds)["loops"] == 2].set_index("init")
    assert b2.loc["stepwise", "ppl_se"] == pytest.approx(1.0)  # std over seeds 1.414 / sqrt(2 seeds)


def test_perplexity_with_documents_is_bootstrapped(tmp_path):
    # per-token NLL spread 0.1 over 20 documents: bootstrap SE ~2.2 at ppl 100, so 1 apart is noise, 100 is not
    for init, ppl in (("stepwise", 100.0), ("average", 101.0)):
        run(tmp_path / "close", init, ppl=ppl, spread=0.1, init=init)
        run(tmp_path / "apart", init, ppl=ppl * (1 if init == "stepwise" else 2), spread=0.1, init=init)
    assert verdicts(build_all(load_runs(tmp_path / "close"))["F.1"])[F1_INIT] == "inconclusive"
    assert verdicts(build_all(load_runs(tmp_path / "apart"))["F.1"])[F1_INIT] == "yes"


def test_bootstrap_standard_error_over_documents():
    row = perplexity(50.0, None, spread=0.1)
    se = bootstrap_ppl_se(row["doc_nll"], row["doc_tokens"], row["ppl"])
    # per-token NLL log(50) +- 0.1 over 20 equal documents: SE of the mean NLL 0.1 / sqrt(20), times ppl
    assert se == pytest.approx(50.0 * 0.1 / math.sqrt(20), rel=0.1)
    per_token_means = [nll / 100 for nll in row["doc_nll"]]  # another convention: refused, not misread
    assert math.isnan(bootstrap_ppl_se(per_token_means, row["doc_tokens"], row["ppl"]))


def test_avg_standard_error_comes_from_task_stderrs(tmp_path):
    run(tmp_path, "step", 50.0, stderr=0.01)
    summary = load_runs(tmp_path).summary()
    assert summary.loc[0, "Avg_se"] == pytest.approx(100 * 0.01 * math.sqrt(7) / 7)


def test_tables_show_token_budget_and_a_fallback_basis(tmp_path):
    run(tmp_path, "step", ppl=100.0, token_budget=TINY)
    f1 = build_all(load_runs(tmp_path))["F.1"].frame
    columns = f1.columns.tolist()
    assert columns.index("token_budget") == columns.index("budget_tier") + 1
    step = f1[(f1["init"] == "stepwise") & (f1["loops"] == 2)]
    paper, mine = (step[step["source"] == s].iloc[0] for s in ("paper", "ours"))
    assert (paper["token_budget"], mine["token_budget"]) == (15e9, TINY)
    assert (paper["basis"], mine["basis"]) == ("Avg", "ppl (fallback: no Avg)")


# --- real record sets: overlapping roots, clashing run ids, missing roots, machine paths -------------------------


def test_two_roots_with_the_same_run_id_both_report(tmp_path):
    run(tmp_path / "a" / "sweep", "0", 50.0)
    run(tmp_path / "b" / "sweep", "0", 40.0, init="average")
    roots = [str(tmp_path / "a" / "sweep"), str(tmp_path / "b" / "sweep")]
    runs = load_runs(*roots)
    assert len(runs) == 2 and runs.runs["run"].is_unique
    main([*roots, "--out", str(tmp_path / "out")])
    assert len(pd.read_csv(tmp_path / "out" / "runs.csv")) == 2


def test_a_record_reached_from_two_roots_is_loaded_once(tmp_path, monkeypatch):
    run(tmp_path / "sweep", "0", 50.0)
    monkeypatch.chdir(tmp_path)
    runs = load_runs(tmp_path, "sweep", tmp_path / "sweep" / "0")
    assert runs.runs["run"].tolist() == ["sweep/0"]


def test_missing_root_exits_2_with_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "no-such-sweep"
    with pytest.raises(SystemExit) as exited:
        main([str(missing), "--out", str(tmp_path / "out")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


ABSOLUTE = re.compile(r"(?:^|[\s`'\"(\[|,=:])/(?:[\w.+-]+/)+")


def test_report_shows_no_absolute_path(tmp_path):
    root = tmp_path / "sweep"
    run(
        root,
        "post",
        45.0,
        **AGG,
        start_from=str(root / "up" / "model"),
        early_exit_phase="post",
        distill="forward_kl",
        teacher=str(tmp_path / "elsewhere" / "full"),
    )
    run(root, "up", 50.0)
    (root / "broken").mkdir()
    (root / "broken" / "record.json").write_text("{")
    main([str(root), "--out", str(tmp_path / "out"), "--min-tokens", "1000"])
    texts = {path.name: path.read_text() for path in (tmp_path / "out").iterdir() if path.suffix in (".md", ".csv")}
    assert "at least 1,000 tokens" in texts["report.md"] and "`sweep/broken/record.json`" in texts["report.md"]
    for name, text in texts.items():
        assert str(tmp_path) not in text and not ABSOLUTE.search(text), name


SHIPPED = ROOT / "docs" / "report"


def test_shipped_report_is_generated_from_its_records_and_claims_no_direction(tmp_path, monkeypatch):
    """docs/report is what `python -m analysis.report docs/report/records --out docs/report` writes (tables and
    checks; PNGs depend on the matplotlib build), and its 6,144-token runs answer no check yes or no."""
    monkeypatch.chdir(ROOT)
    main(["docs/report/records", "--out", str(tmp_path)])
    for generated in sorted(tmp_path.glob("*.csv")) + [tmp_path / "report.md"]:
        assert generated.read_text() == (SHIPPED / generated.name).read_text(), f"docs/report/{generated.name} is stale"
    for checks in SHIPPED.glob("checks_*.csv"):
        ours = pd.read_csv(checks).filter(like="ours (")
        assert set(ours.stack()) <= {"inconclusive", "n.a."}, checks.name
