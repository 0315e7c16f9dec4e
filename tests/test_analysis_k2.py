"""Table K.2 from serving records as benchmarks/serving.py writes them: one row per configuration (engine, exit
policy, max batch), measured and simulated numbers apart, speed-ups and checks like with like (same max batch)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from analysis import build_all, load_runs
from rrt.records import RunRecord
from rrt.serving.engine import EngineStats
from rrt.serving.records import throughput_row, write_throughput
from tests.test_analysis import BASE_SETTING, BUDGET, POST, evals

MODEL = "gemma3_270m"
FULL = {"model": MODEL, "variant": "full", "pretrained": True, "loops": 1, "lora_rank": 0}
FULL |= {"distill": "none", "early_exit": "none", "token_budget": 0}  # benchmarks/serving.py's full-model record
RECURSIVE = {**BASE_SETTING, "early_exit": "aggressive", "early_exit_coef": 0.1, **POST}
VANILLA = {4: 100.0, 8: 160.0}  # measured full-size vanilla static tokens/s per max batch
CSB = {4: 120.0, 8: 200.0}
CDB = {("replay(oracle)", 4): 150.0, ("replay(oracle)", 8): 200.0, ("learned>=0.83", 4): 130.0}
CDB[("learned>=0.83", 8)] = 180.0
SIMULATED_TOKENS, SIMULATED_RATIO = 999.0, 3.25  # only in the purely simulated row


def measured(batching: str, policy: str, batch: int, rate: float, spread: float = 0.01, **extra) -> dict:
    """A measured row as benchmarks/serving.py writes it: three rounds around ``rate``, the simulator's figures."""
    stats = EngineStats(tokens=1000, seconds=1000 / rate, exit_loops={1: 700, 2: 300})
    rounds = [rate * (1 - spread), rate, rate * (1 + spread)]
    return throughput_row(
        batching,
        policy,
        stats,
        batch,
        16,
        setup=f"{batching} {policy}",
        model=f"{MODEL} (served label)",  # the served model's label: must not shadow the setting's model
        tokens_per_s_rounds=rounds,
        vs_vanilla={"median": 1.0, "min": 0.9, "max": 1.1},
        vs_csb={"median": 1.0, "min": 0.9, "max": 1.1},
        **extra,
    )


def simulated_keys(batch: int, policy: str) -> dict:
    """The simulator's figures a measured row carries (distinct per configuration, so each can be traced)."""
    paper = 2.0 + batch / 100 + (0.001 if policy.startswith("learned") else 0)
    return {
        "sim_paper_tokens_per_s": 500.0 + batch,
        "sim_paper_vs_vanilla": paper,
        "sim_paper_vs_csb": paper / 1.4,
        "sim_full_tokens_per_s": 300.0 + batch,
        "sim_full_vs_vanilla": paper - 0.5,
        "sim_full_vs_csb": (paper - 0.5) / 1.4,
    }


def write(root: Path, cdb: dict = CDB, vanilla: dict = VANILLA, budget: int = BUDGET, spread: float = 0.01) -> Path:
    full = RunRecord.create(root / "serving-full", setting=FULL, status="complete")
    full.append("evals", evals(57.0, None))
    rows = [measured("static", "none", b, rate, spread) for b, rate in vanilla.items()]
    rows += [measured("csb", "none", b, rate, spread) for b, rate in CSB.items()]
    write_throughput(full.run_dir, rows)
    run = RunRecord.create(root / "ee-run", setting={**RECURSIVE, "token_budget": budget}, status="complete")
    run.append("evals", evals(50.0, None) + evals(44.0, 1))
    rows = [measured("cdb", policy, b, rate, spread, **simulated_keys(b, policy)) for (policy, b), rate in cdb.items()]
    stats = EngineStats(tokens=1000, seconds=1000 / SIMULATED_TOKENS)
    rows.append(  # benchmarks/simulate.py's kind of row: simulated throughout
        throughput_row("cdb", "replay(oracle)", stats, 4, 16, mode="paper", simulated=True, vs_vanilla=SIMULATED_RATIO)
    )
    write_throughput(run.run_dir, rows)
    return root


def ours(table, **where) -> pd.DataFrame:
    frame = table.frame
    mask = frame["source"] == "ours"
    for key, value in where.items():
        mask &= frame[key] == value
    return frame[mask]


@pytest.fixture
def k2(tmp_path):
    return build_all(load_runs(write(tmp_path)))["K.2"]


def test_every_configuration_is_a_row_not_the_best(k2):
    cdb = ours(k2, engine="cdb", init="stepwise", throughput_from="measured")
    got = {(r.exit_policy, r.max_batch): r.measured_tokens_per_s for r in cdb.itertuples()}
    assert got.keys() == CDB.keys()
    assert got == pytest.approx(CDB)
    assert (cdb["n_runs"] == 1).all() and (cdb["model"] == MODEL).all()
    vanilla = ours(k2, engine="vanilla")
    assert sorted(vanilla["max_batch"]) == [4, 8] and sorted(vanilla["measured_tokens_per_s"]) == pytest.approx(
        [100, 160]
    )
    frame = k2.frame
    for i in frame.index[frame["source"] == "ours"]:  # each ours row has its delta right after it
        assert frame.loc[i + 1, "source"] == "delta"


def test_a_simulated_row_never_lands_in_a_measured_column(k2):
    frame = k2.frame
    measured_columns = [c for c in frame if c.startswith("measured_")]
    assert measured_columns and not frame[measured_columns].isin([SIMULATED_TOKENS, SIMULATED_RATIO]).any().any()
    (sim,) = ours(k2, engine="cdb", init="stepwise", throughput_from="simulated (ours)").itertuples()
    assert sim.simulated_tokens_per_s == pytest.approx(SIMULATED_TOKENS)
    assert sim.simulated_speedup_vs_vanilla == SIMULATED_RATIO
    assert math.isnan(sim.measured_tokens_per_s) and math.isnan(sim.measured_speedup_vs_vanilla)
    for row in ours(k2, engine="cdb", init="stepwise", throughput_from="measured").itertuples():
        expected = simulated_keys(int(row.max_batch), row.exit_policy)  # the row's own simulated figures, apart
        assert row.simulated_speedup_vs_vanilla == pytest.approx(expected["sim_paper_vs_vanilla"])
        assert row.simulated_full_speedup_vs_vanilla == pytest.approx(expected["sim_full_vs_vanilla"])
    paper = frame[frame["source"] == "paper"]
    assert (paper["throughput_from"] == "simulated (paper: A100)").all() and paper["measured_tokens_per_s"].isna().all()
    step = paper[(paper["engine"] == "cdb") & (paper["init"] == "stepwise")].iloc[0]
    assert (step["simulated_speedup_vs_vanilla"], step["simulated_speedup_vs_csb"]) == (2.66, 1.88)


def test_speedups_use_the_same_batchs_vanilla_row(k2):
    for row in ours(k2, engine="cdb", init="stepwise", throughput_from="measured").itertuples():
        batch = int(row.max_batch)
        assert row.measured_speedup_vs_vanilla == pytest.approx(CDB[row.exit_policy, batch] / VANILLA[batch])
        assert row.measured_speedup_vs_csb == pytest.approx(CDB[row.exit_policy, batch] / CSB[batch])
    assert ours(k2, engine="vanilla")["measured_speedup_vs_vanilla"].tolist() == pytest.approx([1.0, 1.0])
    deltas = k2.frame[k2.frame["source"] == "delta"]
    assert deltas["measured_speedup_vs_vanilla"].isna().all()  # measured is never differenced with simulated


CDB_CHECK, CSB_CHECK = 0, 1


def test_checks_compare_at_the_same_batch(tmp_path):
    k2 = build_all(load_runs(write(tmp_path / "a")))["K.2"]
    verdicts, evidence = k2.checks[f"ours ({MODEL})"], k2.checks[f"evidence ({MODEL})"]
    assert verdicts[CDB_CHECK] == "yes" and verdicts[CSB_CHECK] == "yes"  # 1% spread over 3 rounds: separated
    assert "batch 4, exit_policy replay(oracle): yes" in evidence[CDB_CHECK]
    assert k2.checks["ours scored by"][CDB_CHECK].startswith("measured tokens/s at the same max_batch")
    # pooled over batches (or the best of each side) CDB would win: 195 vs 180 tokens/s; at its one batch that has a
    # vanilla row (4) it loses, and batch 16 has none to compare with
    vanilla = {4: 100.0, 8: 260.0}
    slower = {("replay(oracle)", 4): 90.0, ("replay(oracle)", 16): 300.0}
    k2 = build_all(load_runs(write(tmp_path / "b", cdb=slower, vanilla=vanilla)))["K.2"]
    assert k2.checks[f"ours ({MODEL})"][CDB_CHECK] == "no"
    assert "batch 16" not in k2.checks[f"evidence ({MODEL})"][CDB_CHECK]
    mixed = {("replay(oracle)", 4): 150.0, ("replay(oracle)", 8): 120.0}  # wins at 4, loses at 8
    k2 = build_all(load_runs(write(tmp_path / "c", cdb=mixed)))["K.2"]
    assert k2.checks[f"ours ({MODEL})"][CDB_CHECK] == "inconclusive"
    assert "batch 4, exit_policy replay(oracle): yes" in k2.checks[f"evidence ({MODEL})"][CDB_CHECK]
    assert "batch 8, exit_policy replay(oracle): no" in k2.checks[f"evidence ({MODEL})"][CDB_CHECK]


def test_checks_stay_inconclusive_under_the_budget_and_noise_rules(tmp_path):
    k2 = build_all(load_runs(write(tmp_path / "tiny", budget=6144)))["K.2"]
    assert k2.checks[f"ours ({MODEL})"][CDB_CHECK] == "inconclusive"
    assert "6,144 < minimum" in k2.checks[f"evidence ({MODEL})"][CDB_CHECK]
    k2 = build_all(load_runs(write(tmp_path / "noisy", spread=0.5)))["K.2"]  # rounds 50% apart: within the noise
    assert k2.checks[f"ours ({MODEL})"][CSB_CHECK] == "inconclusive"
    assert "within" in k2.checks[f"evidence ({MODEL})"][CSB_CHECK]
