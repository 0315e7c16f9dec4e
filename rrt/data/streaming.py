"""Streaming training batches from SlimPajama-style shards (``.jsonl.zst`` / ``.jsonl``), packed on the fly.

For corpora too large to tokenize up front. Documents are dealt round-robin to *consumers*, one per
(DDP rank, dataloader worker), so no document is read into a batch twice. Each consumer packs its own
documents; an epoch visits the files in an order seeded by ``(seed, epoch)`` and the stream never ends.

Batch order and resume: the DataLoader takes batches from its workers round-robin, so per-rank batch ``j``
comes from logical worker ``j % W``, which is that consumer's batch ``j // W``. A loader that resumes at
batch ``s`` gives its worker ``i`` the role of logical worker ``(s + i) % W`` and lets it skip its first
``(s + i) // W`` batches; it then yields exactly the batches an uninterrupted run would have. Skipping
re-reads and re-tokenizes the skipped text (shards have no index), which is cheap next to training on it.
SlimPajama shards are already shuffled, so no shuffle buffer is applied within a file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import count, islice
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset

from rrt.assets import load_tokenizer
from rrt.data.batches import as_batch, worker_slot
from rrt.data.jsonl import read_texts
from rrt.data.packing import RowPacker, special_ids, tokenize


class StreamingBatches(IterableDataset):
    """Endless packed micro-batches of one rank, read from ``files`` (see the module docstring for the order)."""

    def __init__(self, files: Sequence[str | Path], tokenizer: str, seq_len: int, micro_batch_size: int,
                 seed: int = 0, rank: int = 0, world: int = 1, start_batch: int = 0, text_field: str = "text"):
        if not files:
            raise ValueError("StreamingBatches needs at least one file: set data.train_files")
        self.files = [Path(file) for file in files]
        self.tokenizer, self.seq_len, self.micro_batch_size = tokenizer, seq_len, micro_batch_size
        self.seed, self.rank, self.world, self.start_batch = seed, rank, world, start_batch
        self.text_field = text_field

    def _texts(self, epoch: int, consumer: int, consumers: int) -> Iterator[str]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.files))
        texts = (text for index in order for text in read_texts(self.files[index], self.text_field))
        return islice(texts, consumer, None, consumers)

    def consumer_batches(self, consumer: int, consumers: int) -> Iterator[np.ndarray]:
        """All micro-batches of one consumer, forever (the packer carries over across epochs)."""
        tokenizer = load_tokenizer(self.tokenizer)
        packer = RowPacker(self.seq_len, *special_ids(tokenizer))
        rows: list[np.ndarray] = []
        for epoch in count():
            produced = False
            for tokens in tokenize(self._texts(epoch, consumer, consumers), tokenizer, batch_size=8):
                rows.extend(packer.add(tokens))
                while len(rows) >= self.micro_batch_size:
                    yield np.stack(rows[: self.micro_batch_size])
                    rows, produced = rows[self.micro_batch_size:], True
            if not produced:
                raise ValueError(f"Consumer {consumer} of {consumers} (ranks x workers) got no full micro-batch in "
                                 f"a whole pass over {len(self.files)} file(s): too little text for this many "
                                 f"ranks/workers, or a seq_len/micro_batch_size too large")

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker, workers = worker_slot()
        first = self.start_batch + worker
        consumer = self.rank * workers + first % workers
        for rows in islice(self.consumer_batches(consumer, self.world * workers), first // workers, None):
            yield as_batch(rows)
