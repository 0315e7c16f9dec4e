"""Sliding-window perplexity with a stated context length and stride, BOS at the start of every window.

The paper reports perplexity on SlimPajama / RedPajama / PG19 test sets without stating the window;
here it is explicit: each document is split into windows of at most ``context_len`` tokens (BOS
included) that advance by ``stride`` tokens; a window scores only its new tokens, conditioned on up to
``context_len - 1 - stride`` earlier ones. Every window starts with BOS (Gemma collapses without it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from torch import nn

from rrt.errors import UserError
from rrt.evaluation.lm import RecursiveLM
from rrt.evaluation.scoring import TokenPair, score


def check_window(context_len: int, stride: int) -> None:
    """A window of ``context_len`` tokens (BOS included) advancing by ``stride`` must keep some context."""
    if not 1 <= stride <= context_len - 1:
        raise UserError(f"stride={stride} must be in 1..context_len-1={context_len - 1}")


def windows(tokens: list[int], bos: int, context_len: int, stride: int) -> list[TokenPair]:
    """(context, continuation) pairs that score every token of ``tokens`` exactly once."""
    check_window(context_len, stride)
    pairs, done = [], 0
    while done < len(tokens):
        end = min(len(tokens), context_len - 1 if done == 0 else done + stride)
        start = max(0, end - (context_len - 1))
        pairs.append(([bos, *tokens[start:done]], tokens[done:end]))
        done = end
    return pairs


def perplexity(
    model: nn.Module,
    tokenizer,
    documents: Iterable[str],
    context_len: int = 1024,
    stride: int = 512,
    exit_loop: int | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> dict:
    """Token-level perplexity over ``documents`` (exp of the mean negative log-likelihood per token)."""
    lm = RecursiveLM(model, tokenizer, exit_loop=exit_loop)  # validates exit_loop before compute
    bos = lm.prefix_token_id
    pairs: list[TokenPair] = []
    count = 0
    for text in documents:
        tokens = lm.tok_encode(text, add_special_tokens=False)
        pairs += windows(tokens, bos, context_len, stride) if tokens else []
        count += 1
    if not pairs:
        raise ValueError("no tokens to score: the documents are empty")
    scores = score(
        model,
        pairs,
        batch_size=batch_size,
        max_length=context_len,
        exit_loop=exit_loop,
        progress=progress,
        desc="perplexity",
    )
    tokens = sum(len(cont) for _, cont in pairs)
    nll = -sum(logprob for logprob, _ in scores) / tokens
    return {
        "ppl": math.exp(nll),
        "nll": nll,
        "tokens": tokens,
        "documents": count,
        "context": context_len,
        "stride": stride,
    }


def read_jsonl_texts(path: str | Path, field: str = "text", max_documents: int | None = None) -> list[str]:
    """Documents from a SlimPajama / RedPajama / PG19-format jsonl (``.jsonl``, ``.jsonl.zst``, ``.jsonl.gz``)."""
    from datasets import load_dataset

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"perplexity file {path} does not exist")
    stream = load_dataset("json", data_files=str(path), split="train", streaming=True)
    if max_documents is not None:
        stream = stream.take(max_documents)
    texts = []
    for row in stream:
        if field not in row:
            raise KeyError(f"{path}: rows have no '{field}' field (fields: {sorted(row)}); set the text field")
        texts.append(row[field])
    return texts
