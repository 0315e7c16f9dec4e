"""Real English text for uptraining and perplexity: corpus building, packing, streaming, the DataModule."""

from rrt.data.batches import PackedBatches, eval_batches, train_batches
from rrt.data.corpus import CorpusPaths, build_local_corpus, load_documents
from rrt.data.packing import RowPacker, pack_documents
from rrt.data.streaming import StreamingBatches

__all__ = [
    "CorpusPaths",
    "PackedBatches",
    "RowPacker",
    "StreamingBatches",
    "build_local_corpus",
    "eval_batches",
    "load_documents",
    "pack_documents",
    "train_batches",
]
