"""Plan a sweep before submitting it: validate every job's config and find the runs that are already complete.

Everything here runs on the submitting machine, so a bad sweep fails in seconds instead of after queueing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write

from rrt.records import RunRecord


@dataclass(frozen=True)
class PlannedJob:
    """One job of a sweep: its overrides, its composed config and where its run lives."""

    index: int
    overrides: tuple[str, ...]
    config: DictConfig
    run_dir: Path
    complete: bool


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


def validate(sweep_config: DictConfig, run_dir: Path) -> None:
    """The training preflight (budget divisibility over nodes x devices, variant, writable run dir) for one job."""
    from rrt.training.run import preflight

    config = copy.deepcopy(sweep_config)
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.runtime.output_dir = str(run_dir)
    with hydra_config_of(config):
        preflight(config)


def plan_jobs(config_loader, master_config: DictConfig, job_overrides: Sequence[Sequence[str]], first_index: int) -> list[PlannedJob]:
    """Compose, validate and locate every job; raise ValueError naming the job whose config is bad."""
    jobs = []
    for offset, overrides in enumerate(job_overrides):
        index = first_index + offset
        sweep_config = config_loader.load_sweep_config(master_config, list(overrides))
        run_dir = job_run_dir(sweep_config)
        try:
            validate(sweep_config, run_dir)
        except (ValueError, FileNotFoundError, PermissionError) as error:
            raise ValueError(f"sweep job #{index} ({' '.join(overrides)}) would fail, nothing was submitted: {error}") from error
        complete = sweep_config.resume == "auto" and (run_dir / "record.json").exists() and RunRecord.load(run_dir).complete
        jobs.append(PlannedJob(index, tuple(overrides), sweep_config, run_dir, complete))
    return jobs
