"""Streaming resume is O(1) in the text consumed and continues exactly where the uninterrupted run was.

The saved consumer positions (the DataModule's state, in the checkpoint) make a resumed consumer seek to its
byte offset and re-tokenize at most one chunk of documents; the counters below wrap what the stream reads.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from rrt.data import streaming
from rrt.data.datamodule import TextDataModule
from rrt.data.streaming import CHUNK_DOCS, StreamingBatches
from rrt.errors import UserError
from tests.helpers import doc, write_jsonl


class Counter:
    """Documents tokenized and bytes read by the stream (in this process: ``num_workers=0``)."""

    def __init__(self, monkeypatch):
        self.docs = self.bytes = 0
        tokenize, open_text = streaming.tokenize, streaming.open_text

        def counting_tokenize(texts, *args, **kwargs):
            texts = list(texts)
            self.docs += len(texts)
            return tokenize(texts, *args, **kwargs)

        counter = self

        class CountingReader:
            def __init__(self, path):
                self.handle = open_text(path)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.handle.close()

            def seek(self, offset):
                return self.handle.seek(offset)

            def read(self, size=-1):
                block = self.handle.read(size)
                counter.bytes += len(block)
                return block

        monkeypatch.setattr(streaming, "tokenize", counting_tokenize)
        monkeypatch.setattr(streaming, "open_text", CountingReader)

    def reset(self) -> None:
        self.docs = self.bytes = 0


@pytest.fixture
def big_shards(tmp_path) -> list[Path]:
    """Three plain-jsonl shards of 1500 numbered documents each (~100 kB apiece)."""
    return [
        write_jsonl(tmp_path / f"chunk_{s}.jsonl", [doc((s * 1500 + i) % 150, 5 + i % 7) for i in range(1500)])
        for s in range(3)
    ]


def datamodule(tokenizer: str, files: list[Path], workers: int = 0) -> TextDataModule:
    return TextDataModule(
        "slimpajama",
        tokenizer,
        seq_len=8,
        micro_batch_size=2,
        seed=3,
        train_files=[str(f) for f in files],
        val_files=[str(files[0])],
        num_workers=workers,
    )


def trained_prefix(data: TextDataModule, dataset, n: int) -> list[torch.Tensor]:
    """The first ``n`` batches, each passed through the hook Lightning calls before training on a batch."""
    loader = DataLoader(dataset, batch_size=None, num_workers=data.num_workers)
    batches = []
    for batch, _ in zip(loader, range(n)):
        batch = data.on_before_batch_transfer(batch, 0)
        assert list(batch) == ["input_ids"]  # the position went to the DataModule, not to the model
        batches.append(batch["input_ids"])
    return batches


def test_resume_reads_o1_text_and_gives_the_uninterrupted_batches(tokenizer_dir, big_shards, monkeypatch):
    counter = Counter(monkeypatch)
    uninterrupted = datamodule(tokenizer_dir, big_shards)
    batches = trained_prefix(uninterrupted, uninterrupted.train_dataset(), 2600)  # into the 3rd file of the order
    for n in (40, 2500):
        first = datamodule(tokenizer_dir, big_shards)
        counter.reset()
        trained_prefix(first, first.train_dataset(), n)
        consumed = counter.bytes
        state = first.state_dict()
        assert list(state["positions"]) == [0]  # world 1 x 1 worker: one consumer

        resumed = datamodule(tokenizer_dir, big_shards)
        resumed.load_state_dict(state)
        counter.reset()
        loader = iter(DataLoader(resumed.train_dataset(start_batch=n), batch_size=None))
        assert torch.equal(next(loader)["input_ids"], batches[n])
        assert counter.docs <= 2 * CHUNK_DOCS  # re-tokenized: at most the chunk it stopped in, plus the next
        assert counter.bytes <= max(f.stat().st_size for f in big_shards)  # sought there: never the text before
        if n == 2500:
            assert consumed > 2 * max(f.stat().st_size for f in big_shards)
        assert all(torch.equal(next(loader)["input_ids"], batches[k]) for k in range(n + 1, n + 30))


@pytest.mark.parametrize("zstd", [False, True])
def test_resume_with_workers_and_ranks_continues_exactly(tokenizer_dir, tmp_path, zstd):
    suffix = ".jsonl.zst" if zstd else ".jsonl"
    files = [
        write_jsonl(tmp_path / f"c{s}{suffix}", [doc(s * 40 + i, 5 + i % 7) for i in range(40)], zstd=zstd)
        for s in range(3)
    ]

    def dataset(data: TextDataModule, start: int) -> StreamingBatches:
        return StreamingBatches(
            files, tokenizer_dir, 8, 2, seed=5, rank=1, world=2, start_batch=start, positions=data._positions
        )

    data = datamodule(tokenizer_dir, files, workers=2)
    loader = iter(DataLoader(dataset(data, 0), batch_size=None, num_workers=2))
    full = [data.on_before_batch_transfer(next(loader), 0)["input_ids"] for _ in range(60)]  # > one pass: epochs roll

    first = datamodule(tokenizer_dir, files, workers=2)
    loader = iter(DataLoader(dataset(first, 0), batch_size=None, num_workers=2))
    for _ in range(13):
        first.on_before_batch_transfer(next(loader), 0)
    resumed = datamodule(tokenizer_dir, files, workers=2)
    resumed._positions = {**first._positions}  # what state_dict / load_state_dict carry (one rank here)
    assert sorted(resumed._positions) == [2, 3]  # rank 1's two consumers
    again = DataLoader(dataset(resumed, 13), batch_size=None, num_workers=2)
    got = [batch["input_ids"] for batch, _ in zip(again, range(47))]
    assert len(got) == 47 and all(torch.equal(a, b) for a, b in zip(full[13:], got))


class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["input_ids"].clone())
        return (self.weight - batch["input_ids"].float().mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_checkpoint_carries_the_positions(tokenizer_dir, big_shards, tmp_path, monkeypatch):
    counter = Counter(monkeypatch)

    def fit(max_steps: int, ckpt_path: str | None = None) -> tuple[_Recorder, L.Trainer]:
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=max_steps,
            accumulate_grad_batches=2,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        module = _Recorder()
        trainer.fit(module, datamodule=datamodule(tokenizer_dir, big_shards), ckpt_path=ckpt_path)
        return module, trainer

    uninterrupted, _ = fit(200)
    _, trainer = fit(195)
    trainer.save_checkpoint(tmp_path / "step195.ckpt")
    saved = torch.load(tmp_path / "step195.ckpt", weights_only=True)["TextDataModule"]
    assert saved["world"] == saved["workers"] == 1 and list(saved["positions"]) == [0]
    counter.reset()
    resumed, _ = fit(200, ckpt_path=str(tmp_path / "step195.ckpt"))
    assert len(resumed.seen) == 10 and all(torch.equal(a, b) for a, b in zip(uninterrupted.seen[390:], resumed.seen))
    assert counter.docs <= 10 * 2 + 2 * CHUNK_DOCS  # the new rows' documents (each makes >= 1 row) and one chunk


def test_resume_with_another_layout_is_refused(tokenizer_dir, big_shards):
    data = datamodule(tokenizer_dir, big_shards)
    trained_prefix(data, data.train_dataset(), 3)
    other = datamodule(tokenizer_dir, big_shards, workers=2)
    with pytest.raises(UserError, match="data.num_workers"):
        other.load_state_dict(data.state_dict())
