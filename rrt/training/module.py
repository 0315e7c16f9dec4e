"""The LightningModule: a (converted) student, an optional frozen teacher, chunked CE/KD/exit losses."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from rrt.recursive.model import RecursiveModel
from rrt.training.losses import LossSpec, lm_loss
from rrt.training.optim import ColumnFreezer, build_optimizer


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run stops as ``failed`` with the step."""


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warmup to the peak lr, then cosine decay to ``min_ratio`` x peak at the last step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class RecursiveLMModule(L.LightningModule):
    """Uptrains ``student``; the teacher is held outside the module tree so checkpoints never include it."""

    def __init__(
        self,
        student: nn.Module,
        loss: LossSpec,
        optimizer: Callable[..., torch.optim.Optimizer],
        total_steps: int,
        warmup_steps: int,
        min_lr_ratio: float,
        tokens_per_step: int,
        teacher: nn.Module | None = None,
    ):
        super().__init__()
        self.student = student
        self._teacher = [teacher] if teacher is not None else []
        # read once: the facade's lookups (family, recursion spec) do not change during a run
        self._recursive = [RecursiveModel(m) for m in (student, teacher) if m is not None]
        self.loss_spec = loss
        self.optimizer_factory = optimizer
        self.total_steps, self.warmup_steps, self.min_lr_ratio = total_steps, warmup_steps, min_lr_ratio
        self.tokens_per_step = tokens_per_step
        self.freezer: ColumnFreezer | None = None  # LaMDA's progressive B freeze, built with the optimizer
        self._step_started: float | None = None

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    def losses(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        student = self._recursive[0]
        with_exits = len(self.loss_spec.exit_weights) > 1
        exits = student.exit_hiddens(input_ids) if with_exits else [student.final_hidden(input_ids)]
        teacher_hidden = teacher_head = None
        if self.teacher is not None:
            teacher = self._recursive[1]
            with torch.no_grad():
                teacher_hidden = teacher.final_hidden(input_ids)
            teacher_head = teacher.head
        return lm_loss(exits, student.head, input_ids, self.loss_spec, teacher_hidden, teacher_head)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.losses(batch["input_ids"])
        if not torch.isfinite(out["loss"]):  # a diverged run must stop as failed, never finish as "complete"
            raise TrainingDiverged(
                f"non-finite training loss ({out['loss'].item()}) at step {self.global_step + 1}: "
                "the run diverged (lower optim.optimizer.lr, check distill/early_exit settings)"
            )
        # averaged over ranks, so a DDP run logs its global batch's loss (as one process with the same batch does)
        self.log_dict({f"train/{k}": v.detach() for k, v in out.items()}, prog_bar=False, sync_dist=True)
        self.log("loss", out["loss"].detach(), prog_bar=True, logger=False)
        return out["loss"]

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self._step_started is None:
            self._step_started = time.perf_counter()

    def on_before_optimizer_step(self, optimizer) -> None:
        step = self.global_step + 1
        if self.freezer is not None:  # after the backward (and DDP's all-reduce), before gradient clipping
            self.freezer.steps_done = self.global_step  # right after a resume too
            self.freezer.mask_gradients()
        elapsed = time.perf_counter() - (self._step_started or time.perf_counter())
        self._step_started = time.perf_counter()
        self.log_dict(
            {
                "train/tokens": float(step * self.tokens_per_step),
                "train/tokens_per_s": self.tokens_per_step / max(elapsed, 1e-9),
                "train/lr": optimizer.param_groups[0]["lr"],
            },
            prog_bar=False,
        )

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.losses(batch["input_ids"])
        self.log("val/ce", out["ce"], sync_dist=True)
        self.log("val/ppl", torch.exp(out["ce"]), sync_dist=True)

    def configure_optimizers(self):
        optimizer, self.freezer = build_optimizer(self.student, self.optimizer_factory, self.total_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(self.warmup_steps, self.total_steps, self.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
