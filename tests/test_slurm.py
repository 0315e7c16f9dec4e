"""Sweeps on a real one-node SLURM cluster (slurm/local_cluster.sh), started and stopped by these tests.

If SLURM cannot be installed or started the tests fail with the reason; `pytest -m "not slurm"` deselects them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT

SCRIPT = ROOT / "slurm" / "local_cluster.sh"
# Two CPU ranks per run (DDP over gloo); the node has 2 cores, so the array's runs take turns.
TINY_DDP = [
    "model=tiny_llama",
    "budget=tiny",
    "logger=csv",
    "hydra/launcher=slurm_cpu",
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
]

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="session")
def slurm_env() -> dict[str, str]:
    env = {**os.environ, "RRT_SLURM_DIR": os.environ.get("RRT_SLURM_DIR", "/tmp/rrt-slurm"), "OMP_NUM_THREADS": "1"}
    was_running = subprocess.run([str(SCRIPT), "status"], env=env, capture_output=True).returncode == 0
    started = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        pytest.fail(
            "the local SLURM cluster did not start (pytest -m 'not slurm' deselects these tests):\n"
            f"{started.stdout}{started.stderr}"
        )
    env["SLURM_CONF"] = f"{env['RRT_SLURM_DIR']}/slurm.conf"
    yield env
    if not was_running:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def sweep_command(runs_root: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "-m", *TINY_DDP, f"paths.runs_root={runs_root}", *overrides]


def records(sweep_dir: Path) -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text()) for path in sorted(sweep_dir.glob("*/record.json"))}


def loss_rows(record: dict) -> list[dict]:
    return [m for m in record["metrics"] if "loss" in m]


@pytest.fixture(scope="module")
def finished_sweep(slurm_env, tmp_path_factory) -> Path:
    runs_root = tmp_path_factory.mktemp("slurm_sweep")
    result = subprocess.run(
        sweep_command(runs_root, "budget.tokens=512", "init=stepwise,average"),
        cwd=ROOT,
        env=slurm_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return runs_root / "sweeps" / "train"


def test_array_sweep_of_two_rank_ddp_runs_completes(finished_sweep: Path):
    runs = records(finished_sweep)
    assert sorted(runs) == [
        # logger: not identity
        "budget.tokens-512+budget-tiny+init-average+model-tiny_llama+trainer.precision-32-true+trainer-ddp",
        "budget.tokens-512+budget-tiny+init-stepwise+model-tiny_llama+trainer.precision-32-true+trainer-ddp",
    ]
    for record in runs.values():
        assert record["status"] == "complete"
        assert record["cluster"]["world_size"] == 2 and record["cluster"]["devices"] == 2
        assert record["budget"]["steps"] == 4 and loss_rows(record)[-1]["step"] == 4
    job_ids = [record["cluster"]["slurm_job_id"] for record in runs.values()]
    assert all(job_ids) and len(set(job_ids)) == 2
    assert sorted(record["cluster"]["slurm_array_task_id"] for record in runs.values()) == ["0", "1"]


def test_resubmitting_the_finished_sweep_launches_nothing_and_says_why(finished_sweep: Path, slurm_env):
    jobs_before = sorted(path.name for path in (finished_sweep / ".submitit").iterdir())
    runs_root = finished_sweep.parents[1]
    result = subprocess.run(
        sweep_command(runs_root, "budget.tokens=512", "init=stepwise,average"),
        cwd=ROOT,
        env=slurm_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("already holds a complete record") == 2
    assert "nothing to launch: all 2 runs of this sweep are complete or still running" in result.stdout
    assert sorted(path.name for path in (finished_sweep / ".submitit").iterdir()) == jobs_before


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def scontrol_job(job_id: str, env: dict) -> str:
    return subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout


def test_preempted_run_checkpoints_requeues_and_resumes_to_the_full_budget(slurm_env, tmp_path: Path):
    """USR2 (SLURM's preemption/time-limit signal) mid-run: the job saves last.ckpt, requeues itself, and the requeued
    job resumes from it; the final record has exactly the uninterrupted run's steps and tokens."""
    sweep = subprocess.Popen(
        sweep_command(tmp_path, "budget.tokens=1536"),
        cwd=ROOT,
        env=slurm_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sweep_dir = tmp_path / "sweeps" / "train"
    job_id = None
    try:

        def running_at_step_2():
            runs = records(sweep_dir)
            record = next(iter(runs.values()), None)
            return record if record and loss_rows(record) and loss_rows(record)[-1]["step"] >= 2 else None

        record = wait_for(running_at_step_2, 300, "the run to reach step 2")
        job_id = record["cluster"]["slurm_job_id"]
        subprocess.run(["scancel", "--signal=USR2", job_id], env=slurm_env, check=True)
        wait_for(lambda: "Restarts=1" in scontrol_job(job_id, slurm_env), 120, "SLURM to requeue the job")
        again = subprocess.run(
            sweep_command(tmp_path, "budget.tokens=1536"),
            cwd=ROOT,
            env=slurm_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert f"is still being trained by SLURM job {job_id} (PENDING)" in again.stdout, again.stdout[-3000:]
        assert "nothing to launch" in again.stdout
        # A requeued job is held for 2 minutes before it may start again; let it start now.
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=slurm_env, check=True)
        output, _ = sweep.communicate(timeout=480)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            if job_id:
                subprocess.run(["scancel", job_id], env=slurm_env)
    assert sweep.returncode == 0, output[-4000:]

    ((name, final),) = records(sweep_dir).items()
    steps = [row["step"] for row in loss_rows(final)]
    assert final["status"] == "complete"
    assert final["budget"]["steps"] == 12 and final["budget"]["tokens_trained"] == 1536
    assert steps == list(range(1, 13))
    assert loss_rows(final)[-1]["tokens"] == 1536
    assert final["cluster"]["slurm_job_id"] == job_id
    logs = "".join(path.read_text() for path in (sweep_dir / ".submitit").rglob("*_log.*"))
    assert "preempted at step" in logs and "Requeued job" in logs
    assert (sweep_dir / name / "checkpoints" / "last.ckpt").exists()
