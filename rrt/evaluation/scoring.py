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


@torch.inference_mode()
def score_batch(model: nn.Module, pairs: list[TokenPair], max_length: int) -> list[tuple[float, bool]]:
    """(sum log p(continuation | context), continuation is the greedy decode) for each pair, one forward."""
    inputs = [(ctx + cont)[-(max_length + 1):][:-1] for ctx, cont in pairs]
    width = max(map(len, inputs))
    batch = torch.zeros(len(inputs), width, dtype=torch.long)
    rows, positions, targets = [], [], []
    for i, ((_, cont), tokens) in enumerate(zip(pairs, inputs)):
        batch[i, : len(tokens)] = torch.tensor(tokens)
        start = len(tokens) - len(cont)  # the logit at position p predicts token p + 1
        rows += [i] * len(cont)
        positions += range(start, len(tokens))
        targets += cont
    device = _device(model)
    rows_t, positions_t = torch.tensor(rows, device=device), torch.tensor(positions, device=device)
    with head_only_at(model, rows_t, positions_t):
        logits = model(input_ids=batch.to(device), use_cache=False).logits[0].float()  # [positions, vocab]
    target = torch.tensor(targets, device=device)
    logprobs = logits.gather(1, target[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
    greedy = logits.argmax(dim=-1) == target
    results, offset = [], 0
    for _, cont in pairs:
        span = slice(offset, offset + len(cont))
        results.append((float(logprobs[span].sum()), bool(greedy[span].all())))
        offset += len(cont)
    return results


def score(model: nn.Module, pairs: list[TokenPair], *, batch_size: int, max_length: int,
          exit_loop: int | None = None, progress: bool = False, desc: str = "scoring") -> list[tuple[float, bool]]:
    """Score every pair in length-sorted batches; results in the input order."""
    if any(not ctx or not cont for ctx, cont in pairs):
        raise ValueError("every scored pair needs a non-empty context (at least BOS) and continuation")
    order = Collator(pairs, sort_fn=lambda pair: (-len(pair[0]) - len(pair[1]), tuple(pair[0] + pair[1])))
    results: list[tuple[float, bool]] = []
    with exit_after_loop(model, exit_loop), tqdm(total=len(pairs), disable=not progress, desc=desc) as bar:
        for chunk in order.get_batched(n=batch_size):
            results += score_batch(model, chunk, max_length)
            bar.update(len(chunk))
    return order.get_original(results)
