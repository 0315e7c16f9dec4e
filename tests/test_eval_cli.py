"""eval.py: a run dir is evaluated into its record; bad input fails before any model is loaded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rrt.cli.evaluate import format_results
from rrt.evaluation.runner import check_eval_config, run_evaluation
from rrt.factory.targets import load_target
from rrt.records import RunRecord
from tests.helpers import ROOT, compose_config


def config(*overrides: str):
    return compose_config("eval", *overrides)


@pytest.fixture
def run_dir(saved_run_dir):
    return saved_run_dir


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": f"Document number {i} is about rivers."}) + "\n" for i in range(3)))
    return path


def test_run_dir_results_go_into_its_record_and_reruns_replace_them(run_dir, corpus):
    cfg = config(
        f"run={run_dir}",
        "eval.tasks=[piqa]",
        "eval.limit=2",
        "eval.exit_loops=[1,2]",
        "eval.progress=false",
        "eval.perplexity.datasets=[]",
        f"+eval.perplexity.files={{tiny: {corpus}}}",
        "eval.perplexity.context_len=16",
        "eval.perplexity.stride=8",
    )
    model, tokenizer, record = load_target(cfg)
    for _ in range(2):
        results = run_evaluation(cfg.eval, model, tokenizer, record=record, output=run_dir / "eval.json")
    saved = RunRecord.load(run_dir).data
    assert [(r["task"], r["exit_loop"]) for r in saved["evals"]] == [("piqa", 1), ("avg", 1), ("piqa", 2), ("avg", 2)]
    assert [(r["dataset"], r["exit_loop"], r["context"], r["stride"]) for r in saved["perplexity"]] == [
        ("tiny", 1, 16, 8),
        ("tiny", 2, 16, 8),
    ]
    assert saved["timings"]["eval_s"] > 0
    assert json.loads((run_dir / "eval.json").read_text()) == results
    table = format_results(results)
    assert "exit loop 1" in table and "piqa" in table and "tiny" in table


@pytest.mark.parametrize(
    "overrides,error,message",
    [
        (["eval.tasks=[piqa,mmlu]"], ValueError, r"unknown eval task\(s\) \['mmlu'\]"),
        (
            ["+eval.perplexity.files={pg19: /nonexistent/pg19.jsonl.zst}"],
            FileNotFoundError,
            r"files.pg19: .* does not exist",
        ),
        (["eval.perplexity.datasets=[slimpajama]"], ValueError, r"unknown perplexity dataset 'slimpajama'"),
        (["eval.subset=last"], ValueError, r"eval.subset='last': use one of"),
    ],
)
def test_bad_config_fails_before_loading_a_model(overrides, error, message):
    with pytest.raises(error, match=message):
        check_eval_config(config(*overrides).eval)


def test_bad_run_dir_says_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"is not a finished run dir: expected record.json and a saved model"):
        load_target(config(f"run={tmp_path}"))


def test_nothing_to_evaluate_says_how_to_name_it():
    with pytest.raises(ValueError, match=r"give run=<run dir>, checkpoint="):
        load_target(config())


@pytest.mark.slow
def test_eval_py_on_a_saved_checkpoint_prints_the_table(run_dir, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "eval.py"),
            f"checkpoint={run_dir / 'model'}",
            "eval=smoke",
            "eval.tasks=[winogrande]",
            "eval.limit=2",
            "eval.perplexity.datasets=[]",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "winogrande" in out.stdout and "exit loop 2" in out.stdout


def test_exit_loop_beyond_the_model_fails_before_any_compute(model, tokenizer):
    cfg = config("eval.tasks=[]", "eval.exit_loops=[1,3]")
    with pytest.raises(ValueError, match=r"exit_loop=3 is outside 1..2"):
        run_evaluation(cfg.eval, model, tokenizer)
