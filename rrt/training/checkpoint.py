"""Checkpoints that are never half-written: a kill -9 during a save leaves the previous file intact.

A sharded checkpoint (``trainer=fsdp``) is a small ``.ckpt`` file naming its shard dir under ``shards/``; the
shards are written first, so renaming the file into place commits both, and dirs no file names are removed.

``last.ckpt`` is a symbolic link to the newest periodic checkpoint (``callbacks.checkpoint.save_last=link``), not a
second copy of it: a run keeps one checkpoint's worth of disk, not two. The link is re-pointed atomically (a new link
renamed over the old one) as soon as the new file is in place, before the file it replaces is removed, so a kill -9
at any moment leaves a ``last.ckpt`` that resolves. A stop on a signal writes ``last.ckpt`` as a file of its own
(the step it stopped at has no periodic file); the next periodic save turns it back into a link.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from rrt.utils.atomic import atomic_path

SHARDS_DIR = "shards"
SHARDS_KEY = "rrt_shards"  # in a sharded checkpoint's file: the name of its dir under shards/


LAST = "last.ckpt"


class AtomicModelCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that writes to ``<file>.tmp`` and renames it into place (rank 0); with ``save_last="link"``
    it points ``last.ckpt`` at each new file at once (see the module docstring)."""

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        with atomic_path(filepath, owner=trainer.is_global_zero) as tmp:
            super()._save_checkpoint(trainer, str(tmp))
        if trainer.is_global_zero:
            if self.save_last == "link" and Path(filepath).name != LAST:
                link_atomically(Path(filepath), Path(filepath).with_name(LAST))
            prune_shards(Path(filepath).parent)
        trainer.strategy.barrier("atomic_checkpoint")
        self._last_checkpoint_saved = filepath

    @staticmethod
    def _link_checkpoint(trainer, filepath: str, linkpath: str) -> None:
        """Lightning's own re-linking, made atomic (Lightning removes the old link before making the new one)."""
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            link_atomically(Path(filepath), Path(linkpath))
        trainer.strategy.barrier("link_checkpoint")


def link_atomically(target: Path, link: Path) -> None:
    """Make ``link`` a relative symbolic link to ``target``, replacing what was there in one rename."""
    tmp = link.with_name(link.name + ".link.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)


class StepBoundary:
    """Tells optimizer-step boundaries from the micro-batches inside a gradient accumulation."""

    def __init__(self) -> None:
        self._last_step: int | None = None

    def reached(self, trainer) -> bool:
        """Whether ``trainer.global_step`` moved since the last call (it did not inside an accumulation)."""
        if trainer.global_step == self._last_step:
            return False
        self._last_step = trainer.global_step
        return True


def save_last_checkpoint(trainer) -> Path:
    """Save ``<run dir>/checkpoints/last.ckpt`` (what ``train(resume=auto)`` reads) on every rank, atomically."""
    path = Path(trainer.default_root_dir) / "checkpoints" / LAST
    with atomic_path(path, owner=trainer.is_global_zero) as tmp:
        trainer.save_checkpoint(tmp)
    if trainer.is_global_zero:
        prune_shards(path.parent)
    trainer.strategy.barrier("save_last_checkpoint")
    return path


def last_checkpoint(run_dir: str | Path) -> Path | None:
    path = Path(run_dir) / "checkpoints" / LAST
    return path if path.exists() else None  # a link resolves: it is re-pointed before its old target goes


def shards_of(checkpoint: Path) -> Path | None:
    """The shard dir of a sharded checkpoint file; None for a full checkpoint (read lazily: mmap, no code)."""
    name = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=True).get(SHARDS_KEY)
    return None if name is None else checkpoint.parent / SHARDS_DIR / name


def prune_shards(directory: Path) -> None:
    """Remove the shard dirs that no checkpoint file in ``directory`` names (replaced or interrupted saves)."""
    shards = directory / SHARDS_DIR
    if not shards.is_dir():
        return
    named = {shards_of(file) for file in directory.glob("*.ckpt") if file.exists()}
    for path in shards.iterdir():
        if path not in named:
            shutil.rmtree(path, ignore_errors=True)


def drop_optimizer_state(run_dir: str | Path) -> None:
    """After a complete run: keep ``last.ckpt`` with the weights and counters (to fine-tune from) but without
    optimizer and scheduler state, and remove the periodic checkpoints (AdamW state is 2x the weights; a sweep of
    complete runs would otherwise keep ~3x its models on disk). Sharded checkpoints are kept as they are."""
    directory = Path(run_dir) / "checkpoints"
    last = directory / LAST
    if not last.is_file() or (directory / SHARDS_DIR).is_dir():
        return
    state = torch.load(last, map_location="cpu", weights_only=True)
    for key in ("optimizer_states", "lr_schedulers"):
        state.pop(key, None)
    with atomic_path(last) as tmp:  # a link is replaced by the file, and the periodic file it named goes below
        torch.save(state, tmp)
    for path in directory.glob("*.ckpt"):
        if path.name != last.name:
            path.unlink()
