"""Mirror logged metrics into the run record (rank 0), so analysis never needs the logger's files.

It also stamps each checkpoint with the run's config hash (so a resume can tell a checkpoint of another
configuration) and keeps the record's ``heartbeat`` fresh (so a status command can tell a dead run).
"""

from __future__ import annotations

import lightning as L

from rrt.records import RunRecord, now

CONFIG_HASH_KEY = "rrt_config_hash"


class RecordCallback(L.Callback):
    def __init__(self, record: RunRecord | None, every_n_steps: int = 1, config_hash: str | None = None):
        self.record = record
        self.every_n_steps = max(1, every_n_steps)
        self.config_hash = config_hash

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[CONFIG_HASH_KEY] = self.config_hash

    def _metrics(self, trainer: L.Trainer, prefix: str) -> dict[str, float]:
        return {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        at_step_boundary = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if self.record is None or not trainer.is_global_zero or not at_step_boundary or step % self.every_n_steps:
            return
        self.record.data["heartbeat"] = now()
        self.record.append("metrics", {"step": step, **self._metrics(trainer, "train/")})

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.record is None or not trainer.is_global_zero or trainer.sanity_checking:
            return
        values = {f"val_{k}": v for k, v in self._metrics(trainer, "val/").items()}
        self.record.append("metrics", {"step": trainer.global_step, **values})
