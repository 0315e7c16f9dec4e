"""Tokenize documents and pack them into fixed-length rows for causal-LM training.

Each document becomes ``BOS + tokens + EOS``; documents are concatenated and cut into rows of ``seq_len``.
A row that would start inside a document gets an extra BOS first, so *every* row starts with BOS: Gemma's
outputs collapse without a BOS at position 0. Apart from those inserted BOS tokens, the rows are exactly
the concatenated stream; only the final partial row is dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from rrt.assets import load_tokenizer
from rrt.cache import cache_root, file_lock
from rrt.errors import UserError
from rrt.utils.atomic import atomic_open


def special_ids(tokenizer) -> tuple[int, int]:
    """(BOS, EOS) ids; models without a BOS (e.g. GPT-NeoX) use EOS as the document separator for both."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError(f"Tokenizer {tokenizer.name_or_path} has no EOS token: set tokenizer.eos_token before packing")
    bos = tokenizer.bos_token_id
    return (eos if bos is None else bos), eos


def tokenize(texts: Iterable[str], tokenizer, batch_size: int = 64) -> Iterator[list[int]]:
    """Token ids of each text, without special tokens (the packer adds them), batched for the fast tokenizer."""
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            yield from tokenizer(batch, add_special_tokens=False)["input_ids"]
            batch = []
    if batch:
        yield from tokenizer(batch, add_special_tokens=False)["input_ids"]


class RowPacker:
    """Feed documents' token ids, get complete rows (int32, length ``seq_len``, each starting with BOS)."""

    def __init__(self, seq_len: int, bos: int, eos: int):
        if seq_len < 2:
            raise UserError(f"seq_len must be at least 2 (BOS + one token), got {seq_len}")
        self.seq_len, self.bos, self.eos = seq_len, bos, eos
        self._row: list[int] = []

    def add(self, tokens: Sequence[int]) -> list[np.ndarray]:
        pending = [self.bos, *tokens, self.eos]
        rows, start = [], 0
        while start < len(pending):
            if not self._row and pending[start] != self.bos:
                self._row.append(self.bos)
            take = self.seq_len - len(self._row)
            self._row.extend(pending[start : start + take])
            start += take
            if len(self._row) == self.seq_len:
                rows.append(np.asarray(self._row, dtype=np.int32))
                self._row = []
        return rows


def pack_documents(texts: Iterable[str], tokenizer, seq_len: int) -> np.ndarray:
    """All complete rows of the packed documents, shape ``[rows, seq_len]``, int32."""
    packer = RowPacker(seq_len, *special_ids(tokenizer))
    rows = [row for tokens in tokenize(texts, tokenizer) for row in packer.add(tokens)]
    return np.stack(rows) if rows else np.zeros((0, seq_len), dtype=np.int32)


def first_rows(texts: Iterable[str], tokenizer, seq_len: int, n_rows: int) -> np.ndarray:
    """The first ``n_rows`` packed rows, reading only as much text as needed (for large validation files)."""
    packer = RowPacker(seq_len, *special_ids(tokenizer))
    rows: list[np.ndarray] = []
    for tokens in tokenize(texts, tokenizer, batch_size=8):
        rows.extend(packer.add(tokens))
        if len(rows) >= n_rows:
            break
    return np.stack(rows[:n_rows]) if rows else np.zeros((0, seq_len), dtype=np.int32)


def tokenizer_key(name: str) -> str:
    """Cache key of a tokenizer: the asset name, or a checkpoint dir's name plus a hash of its absolute path."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return name
    return f"{path.name}-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"


def cached_rows(texts: Callable[[], Iterable[str]], text_sha256: str, tokenizer: str, seq_len: int) -> np.ndarray:
    """Packed rows of ``texts()``, cached per (tokenizer, seq_len, text hash); memory-mapped, read-only.

    Tokenizing the local corpus takes about a minute, so the first process does it under a lock and writes
    the array atomically; other ranks and later runs just map the file.
    """
    path = cache_root() / "packed" / tokenizer_key(tokenizer) / f"{text_sha256[:16]}-L{seq_len}.npy"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.with_suffix(".lock")):
            if not path.is_file():
                rows = pack_documents(texts(), load_tokenizer(tokenizer), seq_len)
                with atomic_open(path, "wb") as handle:
                    np.save(handle, rows)
    return np.load(path, mmap_mode="r")
