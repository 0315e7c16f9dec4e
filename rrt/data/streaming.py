"""Streaming training batches from SlimPajama-style shards (``.jsonl.zst`` / ``.jsonl``), packed on the fly.

For corpora too large to tokenize up front. Documents are dealt round-robin to *consumers*, one per
(DDP rank, dataloader worker), so no document is read into a batch twice. Each consumer packs its own
documents; an epoch visits the files in an order seeded by ``(seed, epoch)`` and the stream never ends.
SlimPajama shards are already shuffled, so no shuffle buffer is applied within a file.

Batch order: the DataLoader takes batches from its workers round-robin, so per-rank batch ``j`` comes from
logical worker ``j % W``, which is that consumer's batch ``j // W``. A loader that resumes at batch ``s`` gives
its worker ``i`` the role of logical worker ``(s + i) % W``; it then yields exactly the batches an uninterrupted
run would have.

Resume costs O(1) in the text consumed: each batch carries its consumer's :class:`Position` after it (file in the
epoch's order, byte offset of the next line, round-robin phase, the packer's partial row). The DataModule keeps
the position of the last batch each consumer trained on and the checkpoint saves them; a resumed consumer seeks
to its position (a ``.zst`` shard is decompressed up to it, never parsed or tokenized: at most one shard) and
re-tokenizes at most one chunk of its documents. A consumer without a saved position (``data.skip_tokens``, or
nothing trained from it yet) skips its first ``(s + i) // W`` batches by re-reading them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import islice
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import zstandard
from torch.utils.data import IterableDataset

from rrt.assets import load_tokenizer
from rrt.data.batches import as_batch, worker_slot
from rrt.data.packing import RowPacker, special_ids, tokenize
from rrt.errors import UserError

POSITION_KEY = "rrt_position"  # in each training batch: {"consumer": id, **Position fields}
CHUNK_DOCS = 8  # documents tokenized together; a resume re-tokenizes at most one chunk


@dataclass(frozen=True)
class Position:
    """Where a consumer's stream stands: the start of a chunk of its documents, and the rows of it consumed."""

    epoch: int = 0
    file: int = 0  # index in the epoch's file order
    offset: int = 0  # byte offset (in the decompressed text) of the next line of that file
    doc: int = 0  # non-blank lines before it in this epoch (documents are dealt by this count)
    carry: tuple[int, ...] = ()  # the packer's partial row before the chunk
    rows: int = 0  # rows of the chunk already consumed

    def to_dict(self) -> dict:
        return {**asdict(self), "carry": list(self.carry)}

    @classmethod
    def from_dict(cls, data: Mapping) -> Position:
        return cls(**{**data, "carry": tuple(data["carry"])})


class _Packer(RowPacker):
    """A RowPacker whose partial row is part of a :class:`Position`."""

    def __init__(self, seq_len: int, bos: int, eos: int, carry: Sequence[int] = ()):
        super().__init__(seq_len, bos, eos)
        self._row = list(carry)

    @property
    def carry(self) -> tuple[int, ...]:
        return tuple(self._row)


def open_text(path: Path) -> BinaryIO:
    """A shard's text as bytes (decompressed for ``.zst``)."""
    raw = open(path, "rb")  # noqa: SIM115  (closed by the caller's ``with``)
    return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True) if path.name.endswith(".zst") else raw


def lines_from(path: Path, offset: int) -> Iterator[tuple[bytes, int]]:
    """(line, byte offset after it) from ``offset`` on; a ``.zst`` shard is decompressed and dropped up to it."""
    with open_text(path) as handle:
        if path.name.endswith(".zst"):
            remaining = offset
            while remaining and (block := handle.read(min(remaining, 1 << 20))):
                remaining -= len(block)
        else:
            handle.seek(offset)
        pending = b""
        while block := handle.read(1 << 16):
            *lines, pending = (pending + block).split(b"\n")
            for line in lines:
                offset += len(line) + 1
                yield line, offset
        if pending:
            yield pending, offset + len(pending)


def text_of(line: bytes, path: Path, field: str) -> str:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} has a line that is not UTF-8 JSON ({error}): one JSON object per line") from error
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise UserError(
            f"{path} has a line without a text field '{field}': set data.text_field to the field that holds the text"
        )
    return record[field]


class StreamingBatches(IterableDataset):
    """Endless packed micro-batches of one rank, read from ``files`` (see the module docstring for the order).

    ``positions`` maps consumer ids to saved :class:`Position` dicts (a resumed run); other consumers start at
    ``start_batch``'s share by re-reading.
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        tokenizer: str,
        seq_len: int,
        micro_batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        start_batch: int = 0,
        text_field: str = "text",
        positions: Mapping[int, Mapping] | None = None,
    ):
        if not files:
            raise ValueError("StreamingBatches needs at least one file: set data.train_files")
        self.files = [Path(file) for file in files]
        self.tokenizer, self.seq_len, self.micro_batch_size = tokenizer, seq_len, micro_batch_size
        self.seed, self.rank, self.world, self.start_batch = seed, rank, world, start_batch
        self.text_field = text_field
        self.positions = dict(positions or {})

    def _documents(self, start: Position, consumer: int, consumers: int) -> Iterator[tuple[str, Position]]:
        """This consumer's documents from ``start`` on, each with the reader's position after it, forever."""
        epoch, file, offset, doc = start.epoch, start.file, start.offset, start.doc
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.files))
            found = False
            while file < len(order):
                path = self.files[order[file]]
                for line, after in lines_from(path, offset):
                    if not line.strip():
                        continue
                    doc += 1
                    if (doc - 1) % consumers == consumer:
                        found = True
                        yield text_of(line, path, self.text_field), Position(epoch, file, after, doc)
                file, offset = file + 1, 0
            if not found and epoch > start.epoch:
                raise UserError(
                    f"consumer {consumer} of {consumers} (ranks x workers) got no document in a whole "
                    f"pass over {len(self.files)} file(s): use more text or fewer ranks/workers"
                )
            epoch, file, doc = epoch + 1, 0, 0

    def consumer_batches(self, consumer: int, consumers: int) -> Iterator[np.ndarray]:
        """All micro-batches of one consumer, forever (the packer carries over across epochs)."""
        return (rows for rows, _ in self.batches_from(consumer, consumers))

    def batches_from(
        self,
        consumer: int,
        consumers: int,
        start: Position | None = None,
    ) -> Iterator[tuple[np.ndarray, Position]]:
        """One consumer's micro-batches from ``start`` on, each with the position right after it, forever."""
        start = start or Position()
        tokenizer = load_tokenizer(self.tokenizer)
        packer = _Packer(self.seq_len, *special_ids(tokenizer), carry=start.carry)
        documents = self._documents(start, consumer, consumers)
        mark, skip, rows, last_epoch = replace(start, rows=0), start.rows, [], start.epoch
        while chunk := list(islice(documents, CHUNK_DOCS)):
            texts = [text for text, _ in chunk]
            made = [row for tokens in tokenize(texts, tokenizer, batch_size=CHUNK_DOCS) for row in packer.add(tokens)]
            following = replace(chunk[-1][1], carry=packer.carry)
            for index in range(skip, len(made)):
                rows.append(made[index])
                if len(rows) == self.micro_batch_size:
                    if mark.epoch > last_epoch + 1:  # a whole pass completed no micro-batch
                        raise UserError(
                            f"consumer {consumer} of {consumers} (ranks x workers) got no full "
                            f"micro-batch in a whole pass over {len(self.files)} file(s): too little "
                            "text for this many ranks/workers, or a seq_len/micro_batch_size too large"
                        )
                    last_epoch = mark.epoch
                    yield np.stack(rows), following if index + 1 == len(made) else replace(mark, rows=index + 1)
                    rows = []
            mark, skip = following, 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker, workers = worker_slot()
        first = self.start_batch + worker
        consumer = self.rank * workers + first % workers
        consumers = self.world * workers
        saved = self.positions.get(consumer)
        if saved is None:
            batches = islice(self.batches_from(consumer, consumers), first // workers, None)
        else:
            batches = self.batches_from(consumer, consumers, Position.from_dict(saved))
        for rows, position in batches:
            yield {**as_batch(rows), POSITION_KEY: {"consumer": consumer, **position.to_dict()}}
