"""Every stop leaves a truthful record: signals, errors before fit, a busy run dir, a bad job in a local sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, TINY, losses_by_step, run_train, single_record, start_train, wait_for_steps

OVERRIDES = [*TINY, "budget.tokens=2048", "budget.checkpoint_every_n_steps=100"]  # 16 steps, no periodic checkpoint


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[int, float]:
    root = tmp_path_factory.mktemp("straight")
    run_train(*OVERRIDES, runs_root=root)
    return losses_by_step(single_record(root))


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_last_ckpt_records_interrupted_and_the_resume_matches(signum, code, straight, tmp_path):
    process = start_train(*OVERRIDES, runs_root=tmp_path)
    wait_for_steps(tmp_path, 3, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
    record = single_record(tmp_path)
    assert process.returncode == code, stderr[-2000:]
    assert record["status"] == "interrupted" and signal.Signals(signum).name in record["error"]
    assert (Path(record["run_dir"]) / "checkpoints" / "last.ckpt").is_file()
    assert len(losses_by_step(record)) < len(straight)

    run_train(*OVERRIDES, runs_root=tmp_path)
    resumed = single_record(tmp_path)
    got = losses_by_step(resumed)
    assert resumed["status"] == "complete" and sorted(got) == sorted(straight)
    assert max(abs(got[s] - straight[s]) for s in straight) <= 1e-6


def test_an_error_before_fit_is_recorded_as_failed(tmp_path):
    run_train(*TINY, "budget.tokens=512", runs_root=tmp_path / "up")
    model_dir = Path(single_record(tmp_path / "up")["run_dir"]) / "model"
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a save cut short
    result = run_train(*TINY, f"model.name={model_dir}", runs_root=tmp_path / "post", check=False)
    record = single_record(tmp_path / "post")
    assert result.returncode == 2 and str(weights) in result.stderr and "unreadable" in result.stderr
    assert record["status"] == "failed" and "unreadable" in record["error"]


def test_a_second_run_into_a_busy_run_dir_is_refused(tmp_path):
    first = start_train(*OVERRIDES, runs_root=tmp_path)
    try:
        wait_for_steps(tmp_path, 1, first)
        second = run_train(*OVERRIDES, runs_root=tmp_path, check=False)
        assert second.returncode == 2 and f"in use by pid {first.pid}" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_a_local_sweep_runs_its_valid_jobs_and_reports_the_bad_one(tmp_path):
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        *TINY,
        "budget.tokens=512",
        "recursion.loops=3,2",
        f"paths.runs_root={tmp_path}",
    ]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"}
    )
    assert result.returncode == 2
    assert "sweep job #0" in result.stderr and "recursion.loops=3 does not divide" in result.stderr
    record = single_record(tmp_path)
    assert record["status"] == "complete" and record["setting"]["loops"] == 2
