"""Preemption: on SLURM's signal, save ``last.ckpt`` at the next optimizer step and requeue the job.

SLURM sends USR2 to every task before a job's time limit (submitit asks for it: ``--signal=USR2@signal_delay_s``),
and an operator or a test can send it at any time (``scancel --signal=USR2 <job>``). A signal handler only sets a
flag; the checkpoint is written between steps by every rank together (a collective save inside a signal handler
could deadlock DDP). Then rank 0 hands over to the handler that was installed before (submitit's: it counts
timeouts against ``max_num_timeout`` and runs ``scontrol requeue``) or requeues by itself, and every rank exits
at once (no result file: the submitting launcher keeps waiting for the requeued job).
The requeued job reruns the same command, and ``train(resume=auto)`` continues from ``last.ckpt``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import Any

from lightning.pytorch.callbacks import Checkpoint
from omegaconf import DictConfig, open_dict

from rrt.training.checkpoint import StepBoundary, save_last_checkpoint

log = logging.getLogger(__name__)


class PreemptionCheckpoint(Checkpoint):
    """Save ``<checkpoint dir>/last.ckpt`` and requeue on ``signum``.

    A ``Checkpoint`` subclass so that Lightning runs it after the other callbacks of a step (the run record has
    the step's metrics before the process exits).
    """

    def __init__(self, signum: int | str = "SIGUSR2") -> None:
        self.signum = signal.Signals[signum] if isinstance(signum, str) else signal.Signals(signum)
        self.received = False
        self._previous: Any = None
        self._boundary = StepBoundary()

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._previous = signal.getsignal(self.signum)
        signal.signal(self.signum, self._on_signal)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)

    def _on_signal(self, signum: int, frame: Any) -> None:
        log.warning("received %s: checkpointing at the next optimizer step", signal.Signals(signum).name)
        self.received = True

    def on_train_start(self, trainer, pl_module) -> None:
        self._boundary.reached(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self._boundary.reached(trainer):  # inside a gradient accumulation: not a step boundary
            return
        if not trainer.strategy.reduce_boolean_decision(self.received, all=False):
            return
        path = save_last_checkpoint(trainer)
        log.warning("preempted at step %d: saved %s", trainer.global_step, path)
        if trainer.is_global_zero:
            # The requeue makes SLURM send SIGTERM at once; Lightning's SIGTERM handler would start a collective
            # with ranks that are gone and turn this clean exit into a failed run.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self._requeue()
        exit_now()

    def _requeue(self) -> None:
        """submitit's handler when there is one (it counts timeouts against max_num_timeout), else scontrol."""
        if callable(self._previous):
            try:
                self._previous(self.signum, None)
            except SystemExit:  # submitit requeued the job and asks to exit
                pass
            return
        job = os.environ["SLURM_JOB_ID"]
        array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else job
        subprocess.run(["scontrol", "requeue", job], check=True)
        log.warning("requeued SLURM job %s", job)


def exit_now() -> None:
    """Leave the process without unwinding: no teardown collectives with ranks that have left, and no result
    file for submitit, whose launcher must keep waiting for the requeued job."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class PreemptibleTask:
    """Wraps Hydra's task function in a SLURM worker: adds the preemption callback to the run's callbacks."""

    def __init__(self, task_function: Any) -> None:
        self.task_function = task_function

    def __call__(self, cfg: DictConfig) -> Any:
        with open_dict(cfg):
            cfg.callbacks.preemption = {"_target_": f"{__name__}.PreemptionCheckpoint"}
        return self.task_function(cfg)
