"""Ctrl-C and SIGTERM stop a run cleanly: at the next optimizer step, with ``last.ckpt`` saved and the record truthful.

Lightning's own handling stops mid-step (a checkpoint then would resume misaligned with gradient accumulation) and
leaves SIGTERM with exit code 0. Here the first signal only sets a flag; at the next step boundary every rank saves
``last.ckpt`` together and the run raises :class:`RunInterrupted`, which the driver records as ``interrupted`` and
the CLI turns into exit code 128 + signal (130 for SIGINT, 143 for SIGTERM). A second signal stops at once.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch.callbacks import Checkpoint

from rrt.training.checkpoint import StepBoundary, save_last_checkpoint

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(Exception):
    """The run was stopped by a signal after saving ``last.ckpt``; re-running the command resumes it."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        super().__init__(
            f"interrupted by {signal.Signals(signum).name} at step {step}; last.ckpt is saved: run the "
            "same command again to resume"
        )


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Outside the training loop (model loading, evaluation), SIGTERM stops at once like Ctrl-C does, so the driver
    records the run as interrupted instead of dying silently."""

    def raise_interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"{signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StopOnSignal(Checkpoint):
    """A ``Checkpoint`` so that Lightning runs it after the other callbacks of a step (the record has its metrics)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._boundary = StepBoundary()

    def on_train_start(self, trainer, pl_module) -> None:
        # after Lightning installed its handlers (at fit start): ours replace them for the training loop
        self._boundary.reached(trainer)
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # the second signal: stop now
            self._restore()
            raise KeyboardInterrupt
        self.received = signum
        log.warning(
            "received %s: stopping after this optimizer step (send it again to stop now)", signal.Signals(signum).name
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self._boundary.reached(trainer):
            return
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        save_last_checkpoint(trainer)
        raise RunInterrupted(self.received or signal.SIGTERM, trainer.global_step)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore()
