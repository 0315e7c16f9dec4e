"""Batched continuation scoring that runs the LM head only where a log-likelihood is needed.

The 262k-entry head of Gemma 3 costs more than its whole 270M body; a multiple-choice request needs
log-probs only on its few continuation tokens. Requests are sorted by length (lm-eval's ``Collator``),
right-padded like ``HFLM`` (causal attention makes padding invisible to real tokens), and a forward
pre-hook on the output embedding hands the head just the needed hidden states, so model-specific
head logic (e.g. Gemma's logit soft-capping) still runs inside the model's own forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from lm_eval.models.utils import Collator
from torch import nn
from tqdm.auto import tqdm

from rrt.recursive.exits import exit_after_loop

TokenPair = tuple[list[int], list[int]]  # (context tokens, continuation tokens)
MAX_POSITIONS = 2048  # head logits per forward: 2048 x 262k fp32 = 2 GiB for Gemma; longer continuations are split


@contextmanager
def head_only_at(model: nn.Module, rows: torch.Tensor, positions: torch.Tensor) -> Iterator[None]:
    """Make the LM head see only hidden[rows, positions] (as one sequence of len(rows) positions)."""

    def select(_module, args):
        return (args[0][rows, positions].unsqueeze(0), *args[1:])

    handle = model.get_output_embeddings().register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _gather(logits: torch.Tensor, targets: list[int], lengths: list[int]) -> list[tuple[float, bool]]:
    """Per-request (sum of target log-probs, all targets greedy) from logits of the concatenated positions."""
    target = torch.tensor(targets, device=logits.device)
    logprobs = logits.gather(1, target[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
    greedy = logits.argmax(dim=-1) == target
    results, offset = [], 0
    for length in lengths:
        span = slice(offset, offset + length)
        results.append((float(logprobs[span].sum()), bool(greedy[span].all())))
        offset += length
    return results


def _padded(sequences: list[list[int]], device: torch.device) -> torch.Tensor:
    """Right-padded batch (padding after a sequence never reaches its tokens under causal attention)."""
    batch = torch.zeros(len(sequences), max(map(len, sequences)), dtype=torch.long)
    for i, tokens in enumerate(sequences):
        batch[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return batch.to(device)


@torch.inference_mode()
def score_batch(model: nn.Module, pairs: list[TokenPair], max_length: int) -> list[tuple[float, bool]]:
    """(sum log p(continuation | context), continuation is the greedy decode) for each pair, one forward."""
    inputs = [(ctx + cont)[-(max_length + 1):][:-1] for ctx, cont in pairs]
    batch = _padded(inputs, _device(model))
    rows, positions = [], []
    for i, ((_, cont), tokens) in enumerate(zip(pairs, inputs)):
        rows += [i] * len(cont)
        positions += range(len(tokens) - len(cont), len(tokens))  # the logit at position p predicts token p + 1
    with head_only_at(model, torch.tensor(rows, device=batch.device), torch.tensor(positions, device=batch.device)):
        logits = model(input_ids=batch, use_cache=False).logits[0].float()  # [positions, vocab]
    return _gather(logits, [t for _, cont in pairs for t in cont], [len(cont) for _, cont in pairs])


def _pieces(pairs: list[TokenPair], limit: int) -> tuple[list[TokenPair], list[int]]:
    """Split continuations longer than ``limit`` into consecutive pieces (exact: log p is a sum over tokens)."""
    pieces, owners = [], []
    for i, (ctx, cont) in enumerate(pairs):
        for k in range(0, len(cont), limit):
            pieces.append((ctx + cont[:k], cont[k:k + limit]))
            owners.append(i)
    return pieces, owners


def _within(items: list, size, budget: int) -> Iterator[list]:
    """Consecutive runs of ``items`` whose sizes sum to at most ``budget`` (at least one item each)."""
    part, used = [], 0
    for item in items:
        if part and used + size(item) > budget:
            yield part
            part, used = [], 0
        part.append(item)
        used += size(item)
    if part:
        yield part


def score(model: nn.Module, pairs: list[TokenPair], *, batch_size: int, max_length: int,
          exit_loop: int | None = None, max_positions: int = MAX_POSITIONS, progress: bool = False,
          desc: str = "scoring") -> list[tuple[float, bool]]:
    """Score every pair in length-sorted batches; results in input order."""
    if any(not ctx or not cont for ctx, cont in pairs):
        raise ValueError("every scored pair needs a non-empty context (at least BOS) and continuation")
    pieces, owners = _pieces(pairs, max_positions)
    order = Collator(pieces, sort_fn=lambda pair: (-len(pair[0]) - len(pair[1]), tuple(pair[0] + pair[1])))
    scored: list[tuple[float, bool]] = []
    with exit_after_loop(model, exit_loop), tqdm(total=len(pieces), disable=not progress, desc=desc) as bar:
        for chunk in order.get_batched(n=batch_size):
            for part in _within(chunk, lambda pair: len(pair[1]), max_positions):
                scored += score_batch(model, part, max_length)
                bar.update(len(part))
    results = [(0.0, True)] * len(pairs)
    for owner, (logprob, greedy) in zip(owners, order.get_original(scored)):
        results[owner] = (results[owner][0] + logprob, results[owner][1] and greedy)
    return results
