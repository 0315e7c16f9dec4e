"""Sliding-window perplexity: every token scored once with BOS-led windows; jsonl(.zst) corpora."""

from __future__ import annotations

import json
import math

import pytest
import torch
import zstandard

from rrt.evaluation.perplexity import perplexity, read_jsonl_texts, windows

BOS = 2


@pytest.mark.parametrize("n,context_len,stride", [(1, 4, 1), (10, 4, 3), (23, 8, 3), (7, 16, 8)])
def test_windows_score_each_token_once_with_bounded_bos_led_context(n, context_len, stride):
    tokens = list(range(100, 100 + n))
    pairs = windows(tokens, BOS, context_len, stride)
    assert [t for _, cont in pairs for t in cont] == tokens
    for context, cont in pairs:
        assert context[0] == BOS and len(context) + len(cont) <= context_len
        assert context[1:] + cont == tokens[tokens.index(cont[0]) - len(context) + 1 : tokens.index(cont[-1]) + 1]


def test_stride_must_leave_room_for_bos():
    with pytest.raises(ValueError, match=r"stride=8 must be in 1..context_len-1=7"):
        windows([1, 2, 3], BOS, 8, 8)


def test_one_window_equals_a_direct_forward(model, tokenizer):
    text = "The cat sat on the mat and looked at the dog."
    tokens = [tokenizer.bos_token_id, *tokenizer.encode(text, add_special_tokens=False)]
    with torch.no_grad():
        logprobs = model(torch.tensor([tokens])).logits[0, :-1].log_softmax(-1)
    nll = -logprobs.gather(1, torch.tensor(tokens[1:])[:, None]).mean().item()
    result = perplexity(model, tokenizer, [text], context_len=64, stride=32, progress=False)
    assert result["tokens"] == len(tokens) - 1 and result["documents"] == 1
    assert result["nll"] == pytest.approx(nll, abs=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(nll), rel=1e-5)


def test_exit_at_last_loop_equals_full_depth_and_loop_one_differs(model, tokenizer):
    docs = ["A short document about rivers.", "Another one, about mountains and valleys."]
    full = perplexity(model, tokenizer, docs, context_len=8, stride=3, progress=False)
    assert perplexity(model, tokenizer, docs, context_len=8, stride=3, exit_loop=2, progress=False) == full
    loop_one = perplexity(model, tokenizer, docs, context_len=8, stride=3, exit_loop=1, progress=False)
    assert loop_one["ppl"] != full["ppl"]


def test_reads_pg19_style_zstd_jsonl(tmp_path):
    rows = [{"short_book_title": f"Book {i}", "publication_date": 1900 + i, "text": f"Text {i}."} for i in range(5)]
    path = tmp_path / "pg19_test.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    assert read_jsonl_texts(path, max_documents=3) == ["Text 0.", "Text 1.", "Text 2."]
    with pytest.raises(KeyError, match=r"no 'content' field .*'short_book_title'"):
        read_jsonl_texts(path, field="content")


def test_head_position_budget_splits_work_but_not_results(model, tokenizer):
    from rrt.evaluation.scoring import score

    pairs = [([2, 10, 11], list(range(20, 45))), ([2, 12], list(range(30, 37))), ([2, 12], [40, 41])]
    whole = score(model, pairs, batch_size=4, max_length=128)
    split = score(model, pairs, batch_size=4, max_length=128, max_positions=4)
    assert [g for _, g in split] == [g for _, g in whole]
    assert [v for v, _ in split] == pytest.approx([v for v, _ in whole], rel=1e-6)
