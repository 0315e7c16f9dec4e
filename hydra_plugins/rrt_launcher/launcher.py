"""hydra-submitit-launcher's SLURM launcher, made idempotent, validated and preemptible for rrt sweeps.

- Before submitting, every job's config is composed and checked by the training preflight (e.g. a global batch
  that nodes x devices x micro batch do not divide), so a bad sweep fails before anything is queued.
- Jobs whose run dir already holds a complete record, or whose SLURM job is still alive, are not submitted; the
  log says which and why, and a finished sweep launches nothing.
- In the worker, the run gets a preemption callback (rrt.sweeps.preemption): on SLURM's USR2 it saves
  ``last.ckpt`` and requeues, and the requeued job resumes from it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

log = logging.getLogger(__name__)


class RRTSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from rrt.sweeps.plan import plan_jobs

        assert self.config is not None and self.hydra_context is not None
        jobs = plan_jobs(self.hydra_context.config_loader, self.config, job_overrides, initial_job_idx)
        skipped = [job for job in jobs if job.skip_reason]
        pending = [job for job in jobs if not job.skip_reason]
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
                overrides=list(job.overrides), cfg=job.config, working_dir=str(job.run_dir),
                task_name=job.config.hydra.job.name, status=JobStatus.COMPLETED, _return_value=None,
            )
        return [returns[job.index] for job in jobs]

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        from rrt.sweeps.preemption import PreemptibleTask

        if not isinstance(self.task_function, PreemptibleTask):
            self.task_function = PreemptibleTask(self.task_function)
        return super().__call__(*args, **kwargs)
