"""The Lightning DataModule the training loop uses: packed text batches that never run out and resume exactly.

Sources:
- ``local_corpus``: the registry-built English corpus (train split), tokenized once and cached.
- ``jsonl``: your own ``.jsonl`` / ``.jsonl.zst`` files (``train_files``), tokenized once and cached.
- ``slimpajama``: SlimPajama-style shards streamed and packed on the fly (for corpora larger than memory).
Validation uses ``val_files`` when given, else the local corpus's held-out split.

Resume: Lightning restores ``global_step`` before it builds the dataloaders, so ``train_dataloader()`` starts
at micro-batch ``global_step * accumulate_grad_batches`` of this rank; an interrupted and resumed run sees
the same batches as an uninterrupted one. A streaming source also saves where each of its consumers stands
(``state_dict``), so that a resume seeks there instead of re-reading the text consumed (O(1) in it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset

from rrt.assets import ensure_model, load_tokenizer
from rrt.data.batches import PackedBatches, as_batch, eval_batches
from rrt.data.corpus import build_local_corpus, corpus_sha256, load_documents
from rrt.data.jsonl import expand_files, files_sha256, read_texts
from rrt.data.packing import cached_rows, first_rows
from rrt.data.streaming import POSITION_KEY, StreamingBatches
from rrt.errors import UserError

SOURCES = ("local_corpus", "jsonl", "slimpajama")


class TextDataModule(L.LightningDataModule):
    """Packed causal-LM batches ``{"input_ids": LongTensor[micro_batch_size, seq_len]}``; labels = input_ids."""

    def __init__(
        self,
        source: str,
        tokenizer: str,
        seq_len: int,
        micro_batch_size: int,
        seed: int = 0,
        train_files: list[str] | None = None,
        val_files: list[str] | None = None,
        val_batches: int = 8,
        num_workers: int = 0,
        text_field: str = "text",
        skip_tokens: int = 0,
    ):
        super().__init__()
        if source not in SOURCES:
            raise UserError(f"Unknown data source '{source}': use one of {SOURCES}")
        if source != "local_corpus" and not train_files:
            raise UserError(f"data.source={source} needs data.train_files (a list of files or glob patterns)")
        # plain lists (Hydra passes ListConfigs): the checkpoint keeps these hyperparameters and is read weights_only
        train_files, val_files = list(train_files or []), list(val_files or [])
        self.save_hyperparameters()
        self.source, self.tokenizer, self.seq_len = source, tokenizer, seq_len
        self.micro_batch_size, self.seed, self.val_batches = micro_batch_size, seed, val_batches
        self.train_files, self.val_files = list(train_files or []), list(val_files or [])
        self.num_workers, self.text_field = num_workers, text_field
        if skip_tokens < 0:
            raise UserError(f"data.skip_tokens={skip_tokens} must be >= 0")
        self.skip_tokens = skip_tokens
        self._train_rows: np.ndarray | None = None
        self._val_rows: np.ndarray | None = None
        self._positions: dict[int, dict] = {}  # streaming: each consumer's position after its last trained batch

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.micro_batch_size * self.seq_len

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)

    def prepare_data(self) -> None:
        """Build the shared caches once per node (they are also lock-protected, so this is only a speed-up)."""
        ensure_model(self.tokenizer)
        if self.source == "local_corpus" or not self.val_files:
            build_local_corpus()

    def _cached(self, texts: Callable[[], Iterable[str]], sha256: str) -> np.ndarray:
        return cached_rows(texts, sha256, self.tokenizer, self.seq_len)

    def _file_texts(self, files: list[Path]) -> Iterator[str]:
        return (text for file in files for text in read_texts(file, self.text_field))

    def train_rows(self) -> np.ndarray:
        """Packed training rows for the in-memory sources (cached on disk, memory-mapped)."""
        if self._train_rows is None:
            if self.source == "local_corpus":
                self._train_rows = self._cached(lambda: load_documents("train"), corpus_sha256("train"))
            else:
                files = expand_files(self.train_files)
                self._train_rows = self._cached(lambda: self._file_texts(files), files_sha256(files))
        return self._train_rows

    def val_rows(self) -> np.ndarray:
        """Held-out rows: the first ones of ``val_files``, or all of the local corpus's held-out split."""
        if self._val_rows is None:
            if self.val_files:
                files = expand_files(self.val_files)
                _, world = self._rank_world()
                self._val_rows = first_rows(
                    self._file_texts(files),
                    load_tokenizer(self.tokenizer),
                    self.seq_len,
                    self.val_batches * self.micro_batch_size * world,
                )
            else:
                self._val_rows = self._cached(lambda: load_documents("heldout"), corpus_sha256("heldout"))
        return self._val_rows

    def train_dataset(self, start_batch: int = 0) -> IterableDataset:
        """This rank's endless batches from micro-batch ``start_batch`` on (the resume point)."""
        rank, world = self._rank_world()
        if self.source == "slimpajama":
            return StreamingBatches(
                expand_files(self.train_files),
                self.tokenizer,
                self.seq_len,
                self.micro_batch_size,
                self.seed,
                rank,
                world,
                start_batch,
                self.text_field,
                positions=self._positions,
            )
        return PackedBatches(self.train_rows(), self.micro_batch_size, self.seed, rank, world, start_batch)

    def skip_batches(self) -> int:
        """Micro-batches per rank that ``skip_tokens`` covers. Rank r reads rows r, r + W, ... of the epoch's seeded
        order, so k micro-batches on each of W ranks are the order's first k * W * micro_batch_size rows: the same
        text a run with any other W consumed first."""
        _, world = self._rank_world()
        return -(-self.skip_tokens // (self.tokens_per_micro_batch * world))

    def resume_batch(self) -> int:
        """First micro-batch of this rank: the skipped ones, plus those consumed before a checkpoint restore."""
        trainer = self.trainer
        consumed = 0 if trainer is None else trainer.global_step * trainer.accumulate_grad_batches
        return self.skip_batches() + consumed

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_dataset(self.resume_batch()),
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Note where a streamed batch's consumer stands; Lightning calls this for each batch it trains on (after
        any prefetching), so the positions are those of the batches a checkpoint has seen."""
        position = batch.pop(POSITION_KEY, None) if isinstance(batch, dict) else None
        if position is not None:
            self._positions[position.pop("consumer")] = position
        return batch

    def _streaming_layout(self) -> dict[str, int]:
        _, world = self._rank_world()
        return {"world": world, "workers": max(1, self.num_workers)}

    def state_dict(self) -> dict:
        """Streaming: every rank's consumer positions (collective: Lightning calls it on all ranks)."""
        if self.source != "slimpajama":
            return {}
        positions = [self._positions]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            positions = [None] * dist.get_world_size()
            dist.all_gather_object(positions, self._positions)
        merged = {consumer: p for rank_positions in positions for consumer, p in rank_positions.items()}
        return {**self._streaming_layout(), "positions": merged}

    def load_state_dict(self, state: dict) -> None:
        if self.source != "slimpajama" or "positions" not in state:
            return
        saved = {key: state[key] for key in ("world", "workers")}
        if saved != self._streaming_layout():
            raise UserError(
                f"the checkpoint's stream was read by {saved['world']} rank(s) x {saved['workers']} "
                f"worker(s), this run has {self._streaming_layout()}: the batch order depends on both; "
                "resume with the same world size and data.num_workers"
            )
        self._positions = {int(consumer): dict(p) for consumer, p in state["positions"].items()}

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        batches = eval_batches(self.val_rows(), self.micro_batch_size, self.val_batches, rank, world)
        return DataLoader([as_batch(rows) for rows in batches], batch_size=None)
