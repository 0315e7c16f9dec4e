"""Plan a sweep before submitting it: validate every job's config and find the runs to skip (complete or alive).

Everything here runs on the submitting machine, so a bad sweep fails in seconds instead of after queueing.
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write

from rrt.conf.schema import check_keys
from rrt.errors import UserError
from rrt.records import RunRecord


@dataclass(frozen=True)
class PlannedJob:
    """One job of a sweep: its overrides, its composed config and where its run lives; an invalid job (its config
    fails the preflight) carries the error and is reported, never run."""

    index: int
    overrides: tuple[str, ...]
    config: DictConfig
    run_dir: Path
    skip_reason: str | None = None  # why it is not submitted again (complete, or still alive on SLURM); None: submit
    error: str | None = None  # why it cannot run (invalid jobs only)


def skip_reason(run_dir: Path, resume: str) -> str | None:
    """A complete record (unless resume=never) or a record whose SLURM job is still queued or running."""
    if resume != "auto" or not (run_dir / "record.json").exists():
        return None
    record = RunRecord.load(run_dir)
    if record.complete:
        return f"{run_dir} already holds a complete record (resume=never reruns it)"
    job = record.data.get("cluster", {}).get("slurm_job_id")
    state = slurm_job_state(job) if job else None
    if state:
        return f"{run_dir} is still being trained by SLURM job {job} ({state})"
    return None


def slurm_job_state(job_id: str) -> str | None:
    """The job's squeue state (RUNNING, PENDING, ...) or None when SLURM no longer lists it."""
    try:
        result = subprocess.run(
            ["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    state = result.stdout.strip() if result.returncode == 0 else ""
    return state or None


@contextmanager
def hydra_config_of(config: DictConfig) -> Iterator[None]:
    """Make ``${hydra:...}`` interpolations resolve against ``config`` for a moment (as inside its job)."""
    instance = HydraConfig.instance()
    previous = instance.cfg
    instance.set_config(config)
    try:
        yield
    finally:
        instance.cfg = previous


def job_run_dir(sweep_config: DictConfig) -> Path:
    """``hydra.sweep.dir / hydra.sweep.subdir`` resolved for this job (what Hydra's run_job will use)."""
    with hydra_config_of(sweep_config):
        return Path(str(sweep_config.hydra.sweep.dir), str(sweep_config.hydra.sweep.subdir)).absolute()


def preflight_job(sweep_config: DictConfig, run_dir: Path) -> None:
    """The training preflight (budget divisibility over nodes x devices, variant, writable run dir) for one job,
    after the keys no schema has (``+lora.rnak=8``). A job that does not compose at all (``lora.rank=abc``) never
    gets here: Hydra's sweeper composes every job first, and the sweep stops with one line (``compose_errors``)."""
    from rrt.training.preflight import preflight

    check_keys(sweep_config)
    config = copy.deepcopy(sweep_config)
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.runtime.output_dir = str(run_dir)
    with hydra_config_of(config):
        preflight(config)


def plan_jobs(
    config_loader,
    master_config: DictConfig,
    job_overrides: Sequence[Sequence[str]],
    first_index: int,
    keep_going: bool = False,
) -> tuple[list[PlannedJob], list[PlannedJob]]:
    """Compose, validate and locate every job. A bad job raises a UserError naming it (nothing is submitted), or,
    with ``keep_going`` (a local sweep), is returned as invalid so that the valid jobs still run."""
    jobs, invalid = [], []
    for offset, overrides in enumerate(job_overrides):
        index = first_index + offset
        sweep_config = config_loader.load_sweep_config(master_config, list(overrides))
        run_dir = job_run_dir(sweep_config)
        try:
            preflight_job(sweep_config, run_dir)
        except (ValueError, FileNotFoundError, PermissionError) as error:
            if not keep_going:
                raise UserError(
                    f"sweep job #{index} ({' '.join(overrides)}) would fail, nothing was submitted: {error}"
                ) from error
            invalid.append(PlannedJob(index, tuple(overrides), sweep_config, run_dir, error=str(error)))
            continue
        jobs.append(
            PlannedJob(index, tuple(overrides), sweep_config, run_dir, skip_reason(run_dir, sweep_config.resume))
        )
    return jobs, invalid
