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
) -> tuple[list[Request], list[str]]:
    """``count`` requests whose prompts are the first ``prompt_tokens`` tokens of documents long enough to
    hold the longest continuation; each asks for a seeded number of new tokens in [min_new, max_new]."""
    rng = random.Random(seed)
    need = prompt_tokens + max_new
    docs = list(itertools.islice((d for d in documents if len(tokenizer(d).input_ids) > need), count))
    if len(docs) < count:
        raise UserError(
            f"only {len(docs)} documents have more than {need} tokens; ask for fewer requests or new tokens"
        )
    requests = [
        Request(i, tokenizer(d).input_ids[:prompt_tokens], rng.randint(min_new, max_new)) for i, d in enumerate(docs)
    ]
    return requests, docs


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
