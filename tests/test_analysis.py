"""Analysis: records -> tidy frames -> the paper's tables, checks, figures and the report.

``records_root`` is the fixture every shape / robustness test reads; today it is the synthetic sweep below
(known scores, so the checks' answers are exact). To run the same tests on real runs, make ``records_root``
return a directory of real tiny training runs (the synthetic-value tests keep using ``synthetic_root``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from analysis import build_all, load_runs, paper_table
from analysis.columns import TASK_COLUMNS, TASKS
from analysis.figures import all_figures
from analysis.paper import TABLES, provenance
from rrt.records import RunRecord

OFFSETS = [-3, -2, -1, 0, 1, 2, 3]  # per-task spread around a run's Avg (sums to zero, so Avg is exact)

# (run name, setting, Avg in percent); chosen so that every paper conclusion holds except "SVD beats zero init".
SWEEP = [
    ("full-original", dict(variant="full", token_budget=0), 60.0),
    ("full-15", dict(variant="full", token_budget=4096), 58.0),
    ("full-60", dict(variant="full", token_budget=16384), 57.0),
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
    ("step-60", dict(init="stepwise", token_budget=16384), 51.0),
    ("step-fkl", dict(init="stepwise", distill="forward_kl"), 52.0),
    ("step-rkl", dict(init="stepwise", distill="reverse_kl"), 51.5),
    ("ee-agg", dict(init="stepwise", early_exit="aggressive", early_exit_coef=0.1), 50.5),
    ("ee-weighted", dict(init="stepwise", early_exit="weighted"), 49.0),
]
BASE_SETTING = dict(model="gemma3_270m", variant="recursive", loops=2, looping="cycle", init="stepwise", lora_rank=0,
                    lora_init="svd", distill="none", early_exit="none", early_exit_kd=False, token_budget=4096, pretrained=True)
N_EMB = {"full": 100e6, "reduced": 50e6}
THROUGHPUT = {"full-15": {"vanilla": 100.0, "csb": 150.0}, "ee-agg": {"cdb": 260.0}}


def evals(avg: float, exit_loop: int | None) -> list[dict]:
    return [{"task": TASKS[c][0], "metric": TASKS[c][1], "value": (avg + o) / 100, "stderr": 0.01, "n": 100,
             "num_fewshot": 0, "exit_loop": exit_loop, "limit": 100} for c, o in zip(TASK_COLUMNS, OFFSETS)]


def write_sweep(root: Path, with_evals: bool = True) -> Path:
    """The synthetic sweep plus one truncated, one partial and one still-running record."""
    for name, overrides, avg in SWEEP:
        setting = {**BASE_SETTING, **overrides}
        rank = setting["lora_rank"]
        record = RunRecord.create(root / name, setting=setting, status="complete",
                                  params={"non_embedding": N_EMB.get(setting["variant"], 50e6 + rank * 1e4)},
                                  budget={"tokens": setting["token_budget"], "steps": 4})
        record.append("metrics", [{"step": s, "tokens": 1024 * s, "loss": 10 - avg / 10 + 1 / s, "ce": 10 - avg / 10 + 1 / s} for s in range(1, 5)])
        record.append("perplexity", {"dataset": "local_heldout", "exit_loop": None, "ppl": round(200 / avg, 4)})
        if with_evals:
            record.append("evals", evals(avg, None))
        if name.startswith("ee-"):
            record.append("evals" if with_evals else "perplexity",
                          evals(avg - 6, 1) if with_evals else {"dataset": "local_heldout", "exit_loop": 1, "ppl": 200 / (avg - 6)})
        record.append("throughput", [{"engine": e, "tokens_per_s": v} for e, v in THROUGHPUT.get(name, {}).items()])
    (root / "truncated").mkdir()
    (root / "truncated" / "record.json").write_text(json.dumps({"schema": 1, "run_id": "truncated"})[:-7])
    (root / "partial").mkdir()
    (root / "partial" / "record.json").write_text(json.dumps({"schema": 1, "run_id": "partial", "status": "complete"}))
    RunRecord.create(root / "still-running", setting={**BASE_SETTING, "init": "upper"}).append("evals", evals(99.0, None))
    return root


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return write_sweep(tmp_path_factory.mktemp("sweep"))


@pytest.fixture(scope="module")
def records_root(synthetic_root) -> Path:
    """Switch this to a directory of real tiny training runs to run the shape tests on real records."""
    return synthetic_root


@pytest.fixture(scope="module")
def runs(records_root):
    return load_runs(records_root)


@pytest.fixture(scope="module")
def tables(runs):
    return build_all(runs)
