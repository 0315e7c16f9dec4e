"""Batched continuation scoring that runs the LM head only where a log-likelihood is needed.

The 262k-entry head of Gemma 3 costs more than its whole 270M body; a multiple-choice request needs
log-probs only on its few continuation tokens. A forward pre-hook on the output embedding hands the
head just the needed hidden states, so model-specific head logic (e.g. Gemma's logit soft-capping)
still runs inside the model's own forward. Contexts shared by several continuations (every
multiple-choice question) run through the body once; their continuations are scored together from
the context's KV cache. Everything else is sorted by length and right-padded like ``HFLM`` (causal
attention makes padding invisible to real tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from rrt.recursive.model import RecursiveModel

TokenPair = tuple[list[int], list[int]]  # (context tokens, continuation tokens)
SharedContext = tuple[list[int], list[list[int]]]  # (context tokens, its continuations)
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


def _gather(logits: torch.Tensor, continuations: list[list[int]]) -> list[tuple[float, bool]]:
    """Per continuation (sum of its log-probs, all its tokens greedy) from logits of the concatenated positions."""
    target = torch.tensor([t for cont in continuations for t in cont], device=logits.device)
    logprobs = logits.gather(1, target[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
    greedy = logits.argmax(dim=-1) == target
    results, offset = [], 0
    for cont in continuations:
        span = slice(offset, offset + len(cont))
        results.append((float(logprobs[span].sum()), bool(greedy[span].all())))
        offset += len(cont)
    return results


def _padded(sequences: list[list[int]], device: torch.device, left: bool = False) -> torch.Tensor:
    """A padded batch: right padding after a sequence never reaches its tokens under causal attention;
    left padding (masked) keeps a cached prefix contiguous with what follows it."""
    width = max(map(len, sequences))
    batch = torch.zeros(len(sequences), width, dtype=torch.long)
    for i, tokens in enumerate(sequences):
        start = width - len(tokens) if left else 0
        batch[i, start : start + len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return batch.to(device)


def _scored_positions(
    inputs: list[list[int]], continuations: list[list[int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, positions) of the hidden states predicting each continuation: the last len(cont) inputs
    of its row (the logit at position p predicts token p + 1)."""
    rows, positions = [], []
    for i, (tokens, cont) in enumerate(zip(inputs, continuations)):
        rows += [i] * len(cont)
        positions += range(len(tokens) - len(cont), len(tokens))
    return torch.tensor(rows, device=device), torch.tensor(positions, device=device)


@torch.inference_mode()
def score_batch(model: nn.Module, pairs: list[TokenPair], max_length: int) -> list[tuple[float, bool]]:
    """(sum log p(continuation | context), continuation is the greedy decode) for each pair, one forward."""
    inputs = [(ctx + cont)[-(max_length + 1) :][:-1] for ctx, cont in pairs]
    batch = _padded(inputs, _device(model))
    continuations = [cont for _, cont in pairs]
    with head_only_at(model, *_scored_positions(inputs, continuations, batch.device)):
        logits = model(input_ids=batch, use_cache=False).logits[0].float()  # [positions, vocab]
    return _gather(logits, continuations)


@torch.inference_mode()
def score_shared(model: nn.Module, contexts: list[SharedContext]) -> list[tuple[float, bool]]:
    """score_batch's results for every (context, continuation), with each context run through the body once.

    The contexts minus their last token run left-padded (so every row's cache ends at the same slot and
    relative positions, hence RoPE and sliding windows, are exact), without the head. Their KV caches are
    repeated once per continuation, and each continuation runs as ``[last context token] + cont[:-1]``,
    right-padded, with its true positions: all of its log-probs come from this second forward.
    """
    device = _device(model)
    prefixes = [ctx[:-1] for ctx, _ in contexts]
    lengths = torch.tensor([len(prefix) for prefix in prefixes], device=device)
    width = int(lengths.max())
    pad = width - lengths
    prefix_mask = torch.arange(width, device=device)[None] >= pad[:, None]
    prefix_positions = (torch.arange(width, device=device)[None] - pad[:, None]).clamp(min=0)
    nothing = torch.zeros(0, dtype=torch.long, device=device)
    with head_only_at(model, nothing, nothing):
        cache = model(
            input_ids=_padded(prefixes, device, left=True),
            attention_mask=prefix_mask.long(),
            position_ids=prefix_positions,
            use_cache=True,
        ).cache
    owner = torch.tensor([i for i, (_, conts) in enumerate(contexts) for _ in conts], device=device)
    cache.batch_select_indices(owner)
    continuations = [cont for _, conts in contexts for cont in conts]
    suffixes = [ctx[-1:] + cont[:-1] for ctx, conts in contexts for cont in conts]
    batch = _padded(suffixes, device)
    mask = torch.cat([prefix_mask[owner], torch.ones_like(batch, dtype=torch.bool)], dim=1).long()
    positions = lengths[owner, None] + torch.arange(batch.shape[1], device=device)[None]
    with head_only_at(model, *_scored_positions(suffixes, continuations, device)):
        logits = (
            model(input_ids=batch, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
            .logits[0]
            .float()
        )
    return _gather(logits, continuations)


def _pieces(pairs: list[TokenPair], limit: int) -> tuple[list[TokenPair], list[int]]:
    """Split continuations longer than ``limit`` into consecutive pieces (exact: log p is a sum over tokens)."""
    pieces, owners = [], []
    for i, (ctx, cont) in enumerate(pairs):
        for k in range(0, len(cont), limit):
            pieces.append((ctx + cont[:k], cont[k : k + limit]))
            owners.append(i)
    return pieces, owners


def _by_context(pieces: list[TokenPair], max_length: int, max_positions: int) -> tuple[list[list[int]], list[int]]:
    """Indices of pieces grouped by a shared context (scored with score_shared), and the other pieces.

    A group needs >= 2 continuations, a context of >= 2 tokens (BOS + text), no truncation, and at most
    ``max_positions`` scored tokens in all (one forward holds them all).
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, _) in enumerate(pieces):
        groups.setdefault(tuple(ctx), []).append(i)
    shared, single = [], []
    for ctx, members in groups.items():
        fits = (
            all(len(ctx) + len(pieces[i][1]) - 1 <= max_length for i in members)
            and sum(len(pieces[i][1]) for i in members) <= max_positions
        )
        if len(members) > 1 and len(ctx) > 1 and fits:
            shared.append(members)
        else:
            single += members
    return shared, single


def _within(items: list, size: Callable[[object], int], budget: int) -> Iterator[list]:
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


def _batches(items: list, rows: Callable, positions: Callable, batch_size: int, max_positions: int) -> Iterator[list]:
    """Batches of at most ``batch_size`` rows and ``max_positions`` head positions."""
    for chunk in _within(items, rows, batch_size):
        yield from _within(chunk, positions, max_positions)


def score(
    model: nn.Module,
    pairs: list[TokenPair],
    *,
    batch_size: int,
    max_length: int,
    exit_loop: int | None = None,
    max_positions: int = MAX_POSITIONS,
    progress: bool = False,
    desc: str = "scoring",
) -> list[tuple[float, bool]]:
    """Score every pair (batches of ``batch_size`` continuations, longest first); results in input order."""
    if any(not ctx or not cont for ctx, cont in pairs):
        raise ValueError("every scored pair needs a non-empty context (at least BOS) and continuation")
    pieces, owners = _pieces(pairs, max_positions)
    shared, single = _by_context(pieces, max_length, max_positions)

    def scored_tokens(members: list[int]) -> int:
        return sum(len(pieces[i][1]) for i in members)

    shared.sort(key=lambda members: -len(pieces[members[0]][0]) - max(len(pieces[i][1]) for i in members))
    single.sort(key=lambda i: (-len(pieces[i][0]) - len(pieces[i][1]), tuple(pieces[i][0] + pieces[i][1])))
    scored: list[tuple[float, bool]] = [(0.0, True)] * len(pieces)
    with RecursiveModel(model).exit_after(exit_loop), tqdm(total=len(pieces), disable=not progress, desc=desc) as bar:
        for batch in _batches(shared, len, scored_tokens, batch_size, max_positions):
            contexts = [(pieces[members[0]][0], [pieces[i][1] for i in members]) for members in batch]
            indices = [i for members in batch for i in members]
            for i, result in zip(indices, score_shared(model, contexts)):
                scored[i] = result
            bar.update(len(indices))
        for batch in _batches(single, lambda _: 1, lambda i: len(pieces[i][1]), batch_size, max_positions):
            for i, result in zip(batch, score_batch(model, [pieces[i] for i in batch], max_length)):
                scored[i] = result
            bar.update(len(batch))
    results = [(0.0, True)] * len(pairs)
    for owner, (logprob, greedy) in zip(owners, scored):
        results[owner] = (results[owner][0] + logprob, results[owner][1] and greedy)
    return results
