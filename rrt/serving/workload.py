"""Serving workloads from held-out text: prompts cut from documents, and oracle exit schedules for them."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import torch

from rrt.errors import UserError
from rrt.serving.engine import Request
from rrt.serving.trajectories import Trajectory


def text_requests(
    tokenizer, documents: list[str], count: int, prompt_tokens: int, min_new: int, max_new: int, seed: int = 0
) -> tuple[list[Request], list[torch.Tensor]]:
    """``count`` requests cut from consecutive ``prompt_tokens + max_new``-token windows of the documents (the
    first window of every document, then the second, ...; more requests than documents take later windows):
    a request's prompt is its window's first ``prompt_tokens`` tokens and it asks for a seeded number of new
    tokens in [min_new, max_new]. Returns the requests and their windows (the text the teacher-forced exit
    trajectories run over)."""
    rng = random.Random(seed)
    need = prompt_tokens + max_new
    encoded = [tokenizer(d).input_ids for d in documents]
    bos = getattr(tokenizer, "bos_token_id", None)
    # a tokenizer that starts every text with BOS (Gemma) starts every window with it, not only the first
    prefix = [bos] if bos is not None and encoded and all(e[:1] == [bos] for e in encoded) else []
    bodies = [torch.tensor(e[len(prefix) :]) for e in encoded]
    size = need - len(prefix)
    rounds = max((len(b) for b in bodies), default=0) // size
    windows = (
        torch.cat([torch.tensor(prefix, dtype=torch.long), body[j * size : (j + 1) * size]])
        for j in range(rounds)
        for body in bodies
        if len(body) >= (j + 1) * size
    )
    chosen = list(itertools.islice(windows, count))
    if len(chosen) < count:
        raise UserError(
            f"the documents hold only {len(chosen)} windows of {need} tokens (prompt + max new tokens); "
            "ask for fewer requests or new tokens"
        )
    requests = [Request(i, w[:prompt_tokens].tolist(), rng.randint(min_new, max_new)) for i, w in enumerate(chosen)]
    return requests, chosen


def exit_schedule(exit_loops: Sequence[torch.Tensor], requests: Sequence[Request]) -> dict[int, list[int]]:
    """Token k of a request is predicted at position len(prompt) - 1 + k of its document (teacher-forced): its
    exit loop is the document's there (``exit_loops``: one tensor per request's document)."""
    return {
        r.rid: exits[len(r.prompt) - 1 : len(r.prompt) - 1 + r.max_new_tokens].tolist()
        for r, exits in zip(requests, exit_loops)
    }


def oracle_schedule(trajectories: Sequence[Trajectory], requests: Sequence[Request]) -> dict[int, list[int]]:
    """The teacher-forced oracle exit loops of each request's tokens."""
    return exit_schedule([t.oracle for t in trajectories], requests)
