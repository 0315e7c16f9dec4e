"""What a person reads while a run trains: one log handler, a plain line per N optimizer steps, a bar over steps.

Lightning's own bar counts micro-batches against ``max_steps`` (``16/8``) and an endless epoch (``Epoch 0/-2``),
and writes nothing per step outside a terminal; SLURM logs need plain lines (litgpt prints the same fields).
"""

from __future__ import annotations

import logging
import sys

from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from rrt.training.checkpoint import StepBoundary

log = logging.getLogger("rrt.train")


def single_log_handler() -> None:
    """Lightning adds its own stderr handler when imported before logging is configured; Hydra's root handler
    then prints every Lightning line a second time. Route Lightning through the root handler only."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def step_line(step: int, total: int, metrics: dict[str, float]) -> str:
    parts = [f"step {step}/{total}"]
    for key, label, fmt in (
        ("train/tokens", "tokens", "{:,.0f}"),
        ("train/loss", "loss", "{:.4f}"),
        ("train/lr", "lr", "{:.2e}"),
        ("train/tokens_per_s", "tok/s", "{:,.0f}"),
    ):
        if key in metrics:
            parts.append(f"{label} {fmt.format(metrics[key])}")
    return " | ".join(parts)


class StepLog(Callback):
    """Log ``step s/S | tokens | loss | lr | tok/s`` every ``every_n_steps`` optimizer steps (rank 0)."""

    def __init__(self, every_n_steps: int = 1):
        self.every_n_steps = max(1, every_n_steps)
        self._boundary = StepBoundary()

    def on_train_start(self, trainer, pl_module) -> None:
        self._boundary.reached(trainer)  # the resume step is not a new step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (
            not self._boundary.reached(trainer)
            or trainer.global_step % self.every_n_steps
            or not trainer.is_global_zero
        ):
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        log.info("%s", step_line(trainer.global_step, trainer.max_steps, metrics))


class StepProgressBar(TQDMProgressBar):
    """A bar over optimizer steps (not micro-batches), shown only in a terminal (log files get :class:`StepLog`)."""

    @property
    def is_disabled(self) -> bool:
        return super().is_disabled or not sys.stdout.isatty()  # Lightning's bars write to stdout

    def on_train_epoch_start(self, trainer, *_) -> None:
        super().on_train_epoch_start(trainer)
        self.train_progress_bar.reset(total=trainer.max_steps)
        self.train_progress_bar.initial = trainer.global_step
        self.train_progress_bar.set_description("steps")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        bar = self.train_progress_bar
        if trainer.global_step != bar.n:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()
