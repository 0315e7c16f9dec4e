"""Packing, resumable batches, DDP sharding, jsonl / .jsonl.zst streaming and the DataModule (no network)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerFast

from rrt.data.batches import PackedBatches, batches_per_epoch, eval_batches, train_batches
from rrt.data.datamodule import TextDataModule
from rrt.data.jsonl import expand_files, read_texts
from rrt.data.packing import RowPacker, cached_rows, pack_documents
from rrt.data.streaming import StreamingBatches
from tests.helpers import BOS, CONF, EOS, doc, write_jsonl


def doc_numbers(rows) -> set[int]:
    """Numbers of the documents whose first word occurs in ``rows``."""
    return {t - 3 for t in np.asarray(rows).flatten().tolist() if 3 <= t < 153}


# ---------------------------------------------------------------- packing


def test_packer_rows_start_with_bos_and_keep_every_token_but_the_tail():
    docs = [list(range(10, 10 + n)) for n in (3, 9, 1, 14, 6)]
    packer = RowPacker(seq_len=5, bos=BOS, eos=EOS)
    rows = [row for tokens in docs for row in packer.add(tokens)]
    stream = [t for tokens in docs for t in (BOS, *tokens, EOS)]
    assert all(row.dtype == np.int32 and row.shape == (5,) and row[0] == BOS for row in rows)
    flat_without_bos = [t for row in rows for t in row if t != BOS]
    stream_without_bos = [t for t in stream if t != BOS]
    assert flat_without_bos == stream_without_bos[: len(flat_without_bos)]
    assert len(stream_without_bos) - len(flat_without_bos) < 5  # only the final partial row is dropped


def test_packer_puts_each_document_bos_right_before_its_first_token():
    packer = RowPacker(seq_len=4, bos=BOS, eos=EOS)
    rows = np.stack([row for tokens in ([10, 11], [20, 21, 22, 23, 24], [30]) for row in packer.add(tokens)])
    assert rows.tolist() == [[BOS, 10, 11, EOS], [BOS, 20, 21, 22], [BOS, 23, 24, EOS]]  # tail [BOS, 30, EOS] dropped


def test_pack_documents_with_a_real_tokenizer(tokenizer_dir):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    rows = pack_documents(["w0 w1 w2", "w3 w4"], tokenizer, seq_len=4)
    assert rows.tolist() == [[BOS, 3, 4, 5], [BOS, EOS, BOS, 6]]


def test_cached_rows_are_written_once_and_reused(cache, tokenizer_dir):
    calls = []

    def texts():
        calls.append(1)
        return [doc(i, 7) for i in range(20)]

    first = cached_rows(texts, "ab" * 32, tokenizer_dir, 8)
    second = cached_rows(texts, "ab" * 32, tokenizer_dir, 8)
    expected = pack_documents(texts(), PreTrainedTokenizerFast.from_pretrained(tokenizer_dir), 8)
    assert len(calls) == 2 and np.array_equal(first, expected) and np.array_equal(second, expected)
    assert len(list((cache / "packed").rglob("*.npy"))) == 1


# ---------------------------------------------------------------- resumable batches and sharding


def numbered_rows(n: int, seq_len: int = 3) -> np.ndarray:
    """Row i is filled with i, so batches tell which rows they hold."""
    return np.repeat(np.arange(n, dtype=np.int32)[:, None], seq_len, axis=1)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_train_batches_are_deterministic_and_cover_each_epoch_once():
    rows = numbered_rows(23)
    per_epoch = batches_per_epoch(23, 4, 1)
    first = take(train_batches(rows, 4, seed=7), 2 * per_epoch)
    again = take(train_batches(rows, 4, seed=7), 2 * per_epoch)
    other_seed = take(train_batches(rows, 4, seed=8), per_epoch)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other_seed))
    epoch0 = np.concatenate(first[:per_epoch])[:, 0]
    epoch1 = np.concatenate(first[per_epoch:])[:, 0]
    assert len(set(epoch0)) == len(epoch0) == per_epoch * 4  # no row twice within an epoch
    assert not np.array_equal(epoch0, epoch1)  # a new permutation each epoch


def test_resume_from_any_batch_equals_uninterrupted():
    rows = numbered_rows(50)
    full = take(train_batches(rows, 4, seed=3, rank=1, world=2), 30)
    for start in (0, 5, 6, 17):
        resumed = take(train_batches(rows, 4, seed=3, rank=1, world=2, start_batch=start), 30 - start)
        assert all(np.array_equal(a, b) for a, b in zip(full[start:], resumed))


def test_ddp_ranks_get_disjoint_rows_and_equal_batch_counts():
    rows = numbered_rows(41)
    per_epoch = batches_per_epoch(41, 3, 4)
    seen = [np.concatenate(take(train_batches(rows, 3, seed=0, rank=r, world=4), per_epoch))[:, 0] for r in range(4)]
    assert all(len(s) == per_epoch * 3 for s in seen)
    assert len(set(np.concatenate(seen))) == sum(len(s) for s in seen)


def test_loader_workers_keep_the_single_process_order():
    rows = numbered_rows(40)
    expected = take(train_batches(rows, 4, seed=1, start_batch=3), 12)
    loader = DataLoader(PackedBatches(rows, 4, seed=1, start_batch=3), batch_size=None, num_workers=2)
    got = take(iter(loader), 12)
    assert all(torch.equal(g["input_ids"], torch.from_numpy(e.astype(np.int64))) for g, e in zip(got, expected))
    assert got[0]["input_ids"].dtype == torch.long


def test_eval_batches_are_evenly_spaced_disjoint_and_capped():
    rows = numbered_rows(100)
    ranks = [eval_batches(rows, 5, max_batches=3, rank=r, world=2) for r in range(2)]
    assert [len(b) for b in ranks] == [3, 3]
    ids = np.concatenate([np.concatenate(b)[:, 0] for b in ranks])
    assert len(set(ids)) == 30 and ids.min() == 0 and ids.max() >= 90


def test_too_little_data_is_a_clear_error():
    with pytest.raises(ValueError, match="smaller seq_len"):
        next(train_batches(numbered_rows(5), 4, seed=0, world=2))


# ---------------------------------------------------------------- jsonl and SlimPajama streaming


def test_read_texts_from_jsonl_and_zst_with_a_custom_field(tmp_path):
    texts = ["first doc", "second\nline", "third"]
    plain = write_jsonl(tmp_path / "a.jsonl", texts, field="content")
    packed = write_jsonl(tmp_path / "b.jsonl.zst", texts, field="content", zstd=True)
    assert list(read_texts(plain, "content")) == texts == list(read_texts(packed, "content"))
    with pytest.raises(KeyError, match="data.text_field"):
        next(read_texts(plain, "text"))
    assert expand_files([str(tmp_path / "*.jsonl*")]) == [plain, packed]
    with pytest.raises(FileNotFoundError, match="train_files"):
        expand_files([str(tmp_path / "missing*.jsonl")])


@pytest.fixture
def shards(tmp_path) -> list[Path]:
    """Three SlimPajama-style shards of numbered documents (doc i starts with word i)."""
    return [
        write_jsonl(tmp_path / f"chunk_{s}.jsonl.zst", [doc(s * 40 + i, 5 + i % 7) for i in range(40)], zstd=True)
        for s in range(3)
    ]


def test_streaming_shards_by_rank_and_worker_without_overlap(tokenizer_dir, shards):
    consumers = [
        StreamingBatches(shards, tokenizer_dir, 6, 2, seed=0, rank=r, world=2).consumer_batches(c, 4)
        for r, c in ((0, 0), (0, 1), (1, 2), (1, 3))
    ]
    docs = [doc_numbers(take(it, 10)) for it in consumers]
    assert all(docs)
    assert sum(len(d) for d in docs) == len(set().union(*docs))


def test_streaming_resume_with_workers_equals_uninterrupted(tokenizer_dir, shards):
    def run(start: int, n: int) -> list[torch.Tensor]:
        dataset = StreamingBatches(shards, tokenizer_dir, 8, 2, seed=5, rank=1, world=2, start_batch=start)
        loader = DataLoader(dataset, batch_size=None, num_workers=2)
        return [batch["input_ids"] for batch in take(iter(loader), n)]

    full = run(0, 60)  # more than one pass over this rank's text: epochs roll over
    resumed = run(13, 47)
    assert len(resumed) == 47 and all(torch.equal(a, b) for a, b in zip(full[13:], resumed))
    assert all(batch.shape == (2, 8) and (batch[:, 0] == BOS).all() for batch in full)


# ---------------------------------------------------------------- DataModule


def test_datamodule_jsonl_contract(cache, tokenizer_dir, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [doc(i, 9) for i in range(60)])
    val = write_jsonl(tmp_path / "val.jsonl.zst", [doc(i, 9) for i in range(100, 140)], zstd=True)
    data = TextDataModule(
        "jsonl",
        tokenizer_dir,
        seq_len=8,
        micro_batch_size=3,
        seed=2,
        train_files=[str(train)],
        val_files=[str(val)],
        val_batches=4,
    )
    assert data.tokens_per_micro_batch == 24
    batches = take(iter(data.train_dataloader()), 100)  # > one epoch: never runs out
    assert all(b["input_ids"].shape == (3, 8) and b["input_ids"].dtype == torch.long for b in batches)
    resumed = take(iter(data.train_dataset(start_batch=37)), 63)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches[37:], resumed))
    val_batches = list(data.val_dataloader())
    assert len(val_batches) == 4 and all(b["input_ids"].shape == (3, 8) for b in val_batches)
    assert not doc_numbers([b["input_ids"] for b in batches]) & doc_numbers([b["input_ids"] for b in val_batches])


def test_datamodule_slimpajama_streams(cache, tokenizer_dir, shards):
    data = TextDataModule(
        "slimpajama",
        tokenizer_dir,
        seq_len=8,
        micro_batch_size=2,
        train_files=[str(shards[0].parent / "chunk_*.jsonl.zst")],
        val_files=[str(shards[2])],
    )
    assert isinstance(data.train_dataset(), StreamingBatches)
    assert next(iter(data.train_dataloader()))["input_ids"].shape == (2, 8)


def test_datamodule_rejects_bad_configs(tokenizer_dir):
    with pytest.raises(ValueError, match="local_corpus"):
        TextDataModule("pile", tokenizer_dir, 8, 2)
    with pytest.raises(ValueError, match="train_files"):
        TextDataModule("jsonl", tokenizer_dir, 8, 2)


class _Recorder(L.LightningModule):
    """Records every micro-batch it trains on."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["input_ids"].clone())
        return (self.weight - batch["input_ids"].float().mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_resume_continues_exactly_where_it_stopped(cache, tokenizer_dir, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [doc(i, 9) for i in range(60)])

    def fit(max_steps: int, ckpt_path: str | None = None) -> tuple[_Recorder, L.Trainer]:
        data = TextDataModule(
            "jsonl",
            tokenizer_dir,
            seq_len=8,
            micro_batch_size=2,
            seed=4,
            train_files=[str(train)],
            val_files=[str(train)],
        )
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
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return module, trainer

    uninterrupted, _ = fit(6)
    first, trainer = fit(3)
    trainer.save_checkpoint(tmp_path / "step3.ckpt")
    resumed, _ = fit(6, ckpt_path=str(tmp_path / "step3.ckpt"))
    assert len(uninterrupted.seen) == 12 and len(first.seen) == 6 and len(resumed.seen) == 6
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted.seen, first.seen + resumed.seen))


@pytest.mark.parametrize("name", ["local_corpus", "jsonl", "slimpajama"])
def test_hydra_data_configs_instantiate_with_the_shared_keys(name, tokenizer_dir, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    root = OmegaConf.create(
        {
            "budget": {"seq_len": 16, "micro_batch_size": 2, "val_batches": 5},
            "seed": 3,
            "model": {"tokenizer": tokenizer_dir},
            "data": OmegaConf.load(CONF / "data" / f"{name}.yaml"),
        }
    )
    if name != "local_corpus":
        root.data.train_files = [str(write_jsonl(tmp_path / "t.jsonl", ["w1 w2"]))]
    data = instantiate(root.data)
    assert (data.source, data.seq_len, data.micro_batch_size, data.seed, data.tokenizer, data.val_batches) == (
        name,
        16,
        2,
        3,
        tokenizer_dir,
        5,
    )


class _RankRecorder(L.LightningModule):
    """Saves each micro-batch to ``<out>/rank<r>_<i>.npy`` (spawned ranks cannot return Python state)."""

    def __init__(self, out: str):
        super().__init__()
        self.out, self.count = out, 0
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        np.save(Path(self.out) / f"rank{self.global_rank}_{self.count}.npy", batch["input_ids"].numpy())
        self.count += 1
        return (self.weight - batch["input_ids"].float().mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.slow
def test_real_ddp_ranks_get_their_own_disjoint_shards(cache, tokenizer_dir, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [doc(i, 9) for i in range(60)])
    data = TextDataModule(
        "jsonl", tokenizer_dir, seq_len=8, micro_batch_size=2, seed=6, train_files=[str(train)], val_files=[str(train)]
    )
    (tmp_path / "out").mkdir()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=5,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_RankRecorder(str(tmp_path / "out")), datamodule=data)
    rows = data.train_rows()
    for rank in range(2):
        seen = [np.load(tmp_path / "out" / f"rank{rank}_{i}.npy") for i in range(5)]
        expected = take(train_batches(rows, 2, seed=6, rank=rank, world=2), 5)
        assert all(np.array_equal(a, b) for a, b in zip(seen, expected))
    assert not {tuple(r) for i in range(5) for r in np.load(tmp_path / "out" / f"rank0_{i}.npy").tolist()} & {
        tuple(r) for i in range(5) for r in np.load(tmp_path / "out" / f"rank1_{i}.npy").tolist()
    }
