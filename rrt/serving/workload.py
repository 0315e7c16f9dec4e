"""Serving workloads from held-out text: prompts cut from documents, and oracle exit schedules for them."""

from __future__ import annotations

import itertools
import random

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


def oracle_schedule(trajectories: list[Trajectory], requests: list[Request]) -> dict[int, list[int]]:
    """Token k of a request is predicted at position len(prompt) - 1 + k of its document (teacher-forced):
    its oracle exit loop is the trajectory's there."""
    return {
        r.rid: t.oracle[len(r.prompt) - 1 : len(r.prompt) - 1 + r.max_new_tokens].tolist()
        for r, t in zip(requests, trajectories)
    }
