"""rrt's Hydra launchers: local sweeps that survive a bad job, and an idempotent, validated, preemptible SLURM one.

Local (``hydra/launcher=local``, the default): every job is checked by the training preflight first; invalid jobs
are reported one line each and never run, a job that fails at run time does not stop the others, and the sweep
exits non-zero at the end if any job was invalid or failed.

SLURM (hydra-submitit-launcher's, subclassed):

- Before submitting, every job's config is composed and checked by the training preflight (e.g. a global batch
  that nodes x devices x micro batch do not divide), so a bad sweep fails before anything is queued.
- Jobs whose run dir already holds a complete record, or whose SLURM job is still alive, are not submitted; the
  log says which and why, and a finished sweep launches nothing.
- In the worker, the run gets a preemption callback (rrt.sweeps.preemption): on SLURM's USR2 it saves
  ``last.ckpt`` and requeues, and the requeued job resumes from it.

submitit and hydra-submitit-launcher are the ``[slurm]`` extra. Without them this module still imports (Hydra scans
it for every command, and the local launcher lives here), a stand-in ``submitit_slurm`` config lets the slurm_*
profiles compose, and launching one stops with one line naming the extra.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.launcher import Launcher

from rrt.extras import MissingExtraError, require

log = logging.getLogger(__name__)
SLURM_MODULES = ("submitit", "hydra_plugins.hydra_submitit_launcher")


class MissingSlurmLauncher(Launcher):
    """Stands in for hydra-submitit-launcher's SlurmLauncher when the ``[slurm]`` extra is not installed."""

    def __init__(self, **params: Any) -> None:
        try:
            require(SLURM_MODULES, "slurm", "hydra/launcher=slurm_* (SLURM sweeps)")
        except MissingExtraError as error:  # Hydra builds launchers outside rrt's entry point: say it here, once
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    def setup(self, **kwargs: Any) -> None:  # pragma: no cover - __init__ already stopped
        raise NotImplementedError

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        raise NotImplementedError  # pragma: no cover


def _slurm_base() -> type[Launcher]:
    """hydra-submitit-launcher's SlurmLauncher, or the stand-in (registered as ``submitit_slurm``) without it."""
    try:
        require(SLURM_MODULES, "slurm", "SLURM sweeps")
        from hydra_plugins.hydra_submitit_launcher import submitit_launcher
    except (MissingExtraError, ImportError):
        ConfigStore.instance().store(
            group="hydra/launcher",
            name="submitit_slurm",
            provider="rrt_launcher",
            node={"_target_": "hydra_plugins.rrt_launcher.launcher.RRTSlurmLauncher"},
        )
        return MissingSlurmLauncher
    return submitit_launcher.SlurmLauncher


SlurmLauncher = _slurm_base()


class RRTSlurmLauncher(SlurmLauncher):  # type: ignore[misc,valid-type]
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from rrt.sweeps.plan import plan_jobs

        assert self.config is not None and self.hydra_context is not None
        jobs, _ = plan_jobs(self.hydra_context.config_loader, self.config, job_overrides, initial_job_idx)
        skipped = [job for job in jobs if job.skip_reason]
        pending = [job for job in jobs if not job.skip_reason]
        log_disk_estimate(self.config, pending)
        for job in skipped:
            log.info("skipping #%d %s: %s", job.index, " ".join(filter_overrides(job.overrides)), job.skip_reason)
        if not pending:
            log.info("nothing to launch: all %d runs of this sweep are complete or still running", len(jobs))
            returns: dict[int, JobReturn] = {}
        else:
            log.info("launching %d of %d runs (%d complete or still running)", len(pending), len(jobs), len(skipped))
            launched = super().launch([list(job.overrides) for job in pending], pending[0].index)
            returns = {job.index: result for job, result in zip(pending, launched)}
        for job in skipped:
            returns[job.index] = JobReturn(
                overrides=list(job.overrides),
                cfg=job.config,
                working_dir=str(job.run_dir),
                task_name=job.config.hydra.job.name,
                status=JobStatus.COMPLETED,
                _return_value=None,
            )
        return [returns[job.index] for job in jobs]

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        from rrt.sweeps.preemption import PreemptibleTask

        if not isinstance(self.task_function, PreemptibleTask):
            self.task_function = PreemptibleTask(self.task_function)
        return super().__call__(*args, **kwargs)


def log_disk_estimate(config, pending: Sequence) -> None:
    """Before anything launches: the disk the runs to train will need (rrt.sweeps.disk)."""
    from pathlib import Path

    from rrt.sweeps.disk import sweep_disk_summary

    for line in sweep_disk_summary([job.config for job in pending], Path(str(config.hydra.sweep.dir))).splitlines():
        (log.warning if line.startswith("warning:") else log.info)("%s", line)


def _failed(overrides: Sequence[str], config, working_dir: str, code: int) -> JobReturn:
    """A job that did not run to completion, as Hydra's sweeper expects it (it raises the stored exit at the end)."""
    failed = JobReturn(
        overrides=list(overrides),
        cfg=config,
        working_dir=working_dir,
        task_name=config.hydra.job.name,
        status=JobStatus.FAILED,
    )
    failed.return_value = SystemExit(code)
    return failed


class RRTLocalLauncher(BasicLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from rrt.sweeps.plan import plan_jobs

        assert self.config is not None and self.hydra_context is not None
        jobs, invalid = plan_jobs(
            self.hydra_context.config_loader, self.config, job_overrides, initial_job_idx, keep_going=True
        )
        log_disk_estimate(self.config, [job for job in jobs if not job.skip_reason])
        returns: dict[int, JobReturn] = {}
        for job in invalid:
            print(
                f"error: sweep job #{job.index} ({' '.join(filter_overrides(job.overrides))}) is invalid and will "
                f"not run: {job.error}",
                file=sys.stderr,
            )
            returns[job.index] = _failed(job.overrides, job.config, "", 2)
        for job in jobs:
            try:
                returns[job.index] = super().launch([list(job.overrides)], job.index)[0]
            except SystemExit as stop:  # a job's own one-line error (its record says failed); go on with the rest
                log.error(
                    "sweep job #%d (%s) stopped with exit code %s",
                    job.index,
                    " ".join(filter_overrides(job.overrides)),
                    stop.code,
                )
                returns[job.index] = _failed(job.overrides, job.config, str(job.run_dir), int(stop.code or 1))
        return [returns[index] for index in sorted(returns)]
