"""Fixtures shared by test modules (plain helpers and the checkout's paths are in ``tests/helpers.py``).

The Hugging Face libraries are imported inside the fixtures: rrt (imported first) sets them offline, and they
read that setting once, at import.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from rrt.records import RunRecord
from tests.helpers import BOS, EOS, WORDS


def pytest_configure(config):
    """Tests compose rrt's configs without this machine's own overrides (``$RRT_CONFIG_DIR/local/default.yaml``),
    in this process and in the entry points they start."""
    os.environ["RRT_CONFIG_DIR"] = tempfile.mkdtemp(prefix="rrt-tests-config-")


@pytest.fixture(scope="module")
def tokenizer():
    """The real gemma-3 tokenizer (262k vocabulary, BOS)."""
    from rrt.assets import load_tokenizer

    return load_tokenizer("gemma3_270m")


@pytest.fixture(scope="module")
def model(tokenizer):
    """Tiny random Gemma 3 with the real 262k vocabulary, converted to 3 shared layers x 2 loops."""
    import torch
    from transformers import AutoModelForCausalLM

    from rrt.recursive import RecursionSpec, convert_to_recursive
    from tests.tiny import tiny_config

    torch.manual_seed(0)
    config = tiny_config("gemma3", num_layers=6)
    config.vocab_size = len(tokenizer)
    return convert_to_recursive(AutoModelForCausalLM.from_config(config).eval(), RecursionSpec(loops=2))


@pytest.fixture
def saved_run_dir(tmp_path, model, tokenizer):
    """A run dir as train.py leaves it (model/ + record.json), holding the tiny converted model."""
    from rrt.recursive.io import save_converted

    save_converted(model, tmp_path / "model", tokenizer=tokenizer)
    RunRecord.create(tmp_path, config={"model": {"name": "tiny"}}, status="complete")
    return tmp_path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh asset cache (``RRT_CACHE_DIR``)."""
    monkeypatch.setenv("RRT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def tokenizer_dir(tmp_path) -> str:
    """A real (word-level) fast tokenizer saved like a checkpoint: token id = 3 + word number."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<bos>": BOS, "<eos>": EOS, **{word: 3 + i for i, word in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(tmp_path / "tok")
    return str(tmp_path / "tok")
