"""Preemption: on SLURM's signal, save ``last.ckpt`` at the next optimizer step and requeue the job.

SLURM sends USR2 to every task before a job's time limit (submitit asks for it: ``--signal=USR2@signal_delay_s``),
and an operator or a test can send it at any time (``scancel --signal=USR2 <job>``). A signal handler only sets a
flag; the checkpoint is written between steps by every rank together (a collective save inside a signal handler
could deadlock DDP). Then rank 0 hands over to the handler that was installed before (submitit's: it counts
timeouts against ``max_num_timeout`` and runs ``scontrol requeue``) or requeues by itself, and every rank exits.
The requeued job reruns the same command, and ``train(resume=auto)`` continues from ``last.ckpt``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Checkpoint
from omegaconf import DictConfig, open_dict

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
        self._last_step: int | None = None

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
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self._last_step:  # inside a gradient accumulation: not a step boundary
            return
        self._last_step = trainer.global_step
        if not trainer.strategy.reduce_boolean_decision(self.received, all=False):
            return
        path = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"  # what train(resume=auto) reads
        tmp = path.with_name(path.name + ".tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, path)
        trainer.strategy.barrier("preemption_checkpoint")
        log.warning("preempted at step %d: saved %s; requeueing", trainer.global_step, path)
        if trainer.is_global_zero:
            self._requeue()
        raise SystemExit(f"preempted at step {trainer.global_step}; the requeued job resumes from {path}")

    def _requeue(self) -> None:
        if callable(self._previous):  # submitit's handler: counts timeouts, requeues, exits
            self._previous(self.signum, None)
            return
        job = os.environ.get("SLURM_JOB_ID")
        if job is None:
            log.warning("not under SLURM: checkpoint saved, nothing to requeue")
            return
        array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else job
        subprocess.run(["scontrol", "requeue", job], check=True)


class PreemptibleTask:
    """Wraps Hydra's task function in a SLURM worker: adds the preemption callback to the run's callbacks."""

    def __init__(self, task_function: Any) -> None:
        self.task_function = task_function

    def __call__(self, cfg: DictConfig) -> Any:
        with open_dict(cfg):
            cfg.callbacks.preemption = {"_target_": f"{__name__}.PreemptionCheckpoint"}
        return self.task_function(cfg)
