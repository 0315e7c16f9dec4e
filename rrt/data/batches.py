"""Deterministic, endless, resumable micro-batches over packed rows held in memory (or memory-mapped).

Micro-batch number ``i`` of a rank is a pure function of (seed, rank, world, i): epoch ``e = i // per_epoch``
uses the permutation seeded by ``(seed, e)``, split round-robin over ranks and truncated so every rank has
the same number of batches (DDP ranks must step together). Resuming at batch ``i`` is therefore exact and
costs nothing, and the data never runs out.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from rrt.errors import UserError


def batches_per_epoch(n_rows: int, micro_batch_size: int, world: int) -> int:
    per_epoch = n_rows // world // micro_batch_size
    if per_epoch == 0:
        raise UserError(
            f"{n_rows} packed rows cannot fill one micro-batch of {micro_batch_size} on each of {world} "
            f"ranks: use more text, a smaller seq_len or a smaller micro_batch_size"
        )
    return per_epoch


def epoch_order(n_rows: int, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
    """Row indices this rank visits in ``epoch``: its round-robin share of a seeded permutation."""
    permutation = np.random.default_rng([seed, epoch]).permutation(n_rows)
    return permutation[rank::world][: n_rows // world]


def train_batches(
    rows: np.ndarray,
    micro_batch_size: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
    start_batch: int = 0,
    stride: int = 1,
) -> Iterator[np.ndarray]:
    """Micro-batches number ``start_batch, start_batch + stride, ...`` of this rank, forever."""
    per_epoch = batches_per_epoch(len(rows), micro_batch_size, world)
    epoch, order = -1, np.empty(0, dtype=np.int64)
    for index in count(start_batch, stride):
        batch_epoch, k = divmod(index, per_epoch)
        if batch_epoch != epoch:
            epoch, order = batch_epoch, epoch_order(len(rows), seed, batch_epoch, rank, world)
        yield np.asarray(rows[order[k * micro_batch_size : (k + 1) * micro_batch_size]])


def eval_batches(
    rows: np.ndarray, micro_batch_size: int, max_batches: int, rank: int = 0, world: int = 1
) -> list[np.ndarray]:
    """A fixed evaluation set: evenly spaced rows (covering every source), the same batch count on each rank."""
    n_batches = min(max_batches, batches_per_epoch(len(rows), micro_batch_size, world))
    picked = np.linspace(0, len(rows), n_batches * micro_batch_size * world, endpoint=False).astype(np.int64)
    mine = picked[rank::world]
    return [np.asarray(rows[mine[k * micro_batch_size : (k + 1) * micro_batch_size]]) for k in range(n_batches)]


def worker_slot() -> tuple[int, int]:
    """(this dataloader worker's id, number of workers); (0, 1) in the main process."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def as_batch(rows: np.ndarray) -> dict[str, torch.Tensor]:
    """The training-loop contract: ``{"input_ids": LongTensor[micro_batch_size, seq_len]}`` (labels = inputs)."""
    return {"input_ids": torch.from_numpy(rows.astype(np.int64))}


class PackedBatches(IterableDataset):
    """Endless training batches of one rank from :func:`train_batches`.

    DataLoader workers fetch batches round-robin (worker 0, 1, ..., 0, ...), so worker ``w`` of ``W`` makes
    batches ``start + w, start + w + W, ...`` and the loader yields exactly the single-process order.
    """

    def __init__(
        self, rows: np.ndarray, micro_batch_size: int, seed: int, rank: int = 0, world: int = 1, start_batch: int = 0
    ):
        self.rows, self.micro_batch_size, self.seed = rows, micro_batch_size, seed
        self.rank, self.world, self.start_batch = rank, world, start_batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker, workers = worker_slot()
        for rows in train_batches(
            self.rows, self.micro_batch_size, self.seed, self.rank, self.world, self.start_batch + worker, workers
        ):
            yield as_batch(rows)
