"""rrt.cli.serve: a run dir's model is served and its throughput rows land in the run's record."""

from __future__ import annotations

import pytest

from rrt.factory.targets import load_target
from rrt.records import RunRecord
from rrt.serving.runner import check_serve_settings, serve
from tests.helpers import compose_config


def config(*overrides: str):
    return compose_config("serve", *overrides)


@pytest.fixture
def run_dir(saved_run_dir):
    return saved_run_dir


def test_each_policy_adds_one_row_and_reruns_replace_it(run_dir):
    small = [
        "serve.requests=3",
        "serve.max_batch=2",
        "serve.prompt_tokens=8",
        "serve.min_new_tokens=3",
        "serve.max_new_tokens=4",
    ]
    model, tokenizer, record = load_target(config(f"run={run_dir}"))
    for policy in ("none", "confidence", "replay", "replay"):
        row = serve(config(f"run={run_dir}", f"serve.policy={policy}", *small).serve, model, tokenizer, record)
        assert row["engine"] == "cdb" and row["tokens"] == sum(row["exit_hist"].values()) + 3
    rows = RunRecord.load(run_dir).data["throughput"]
    assert [r["exit_policy"] for r in rows] == ["none", "confidence>=0.9", "replay(oracle)"]
    assert all(r["tokens_per_s"] > 0 and r["max_batch"] == 2 for r in rows)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("serve.policy=sometimes", "supported: \\['none', 'confidence', 'learned', 'replay'\\]"),
        ("serve.batching=dynamic", "supported: \\['static', 'csb', 'cdb'\\]"),
        ("serve.adapters=merged", "supported: \\['stacked', 'grouped'\\]"),
    ],
)
def test_bad_settings_fail_before_loading_anything(override, message):
    with pytest.raises(ValueError, match=message):
        check_serve_settings(config(override).serve)
