"""Fixtures shared by test modules."""

from __future__ import annotations

import pytest

from rrt.records import RunRecord
from rrt.recursive.io import save_converted
from tests.test_eval_lm import model, tokenizer  # noqa: F401  (module fixtures: tiny converted model + tokenizer)


@pytest.fixture
def saved_run_dir(tmp_path, model, tokenizer):  # noqa: F811
    """A run dir as train.py leaves it (model/ + record.json), holding the tiny converted model."""
    save_converted(model, tmp_path / "model", tokenizer=tokenizer)
    RunRecord.create(tmp_path, config={"model": {"name": "tiny"}}, status="complete")
    return tmp_path
