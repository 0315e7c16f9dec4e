"""Shared-context scoring: one body pass per multiple-choice context, same log-likelihoods as separate forwards."""

from __future__ import annotations

import random

import pytest
import torch

from rrt.evaluation.scoring import score, score_batch, score_shared
from rrt.recursive import RecursionSpec, convert_to_recursive
from rrt.recursive.model import RecursiveModel
from tests.tiny import tiny_model

FAMILIES = ["gemma3", "gemma", "llama", "qwen2", "gpt_neox"]
BOS = 2


def contexts(seed: int = 0) -> list[tuple[list[int], list[list[int]]]]:
    """Contexts of very different lengths (left padding; longer than gemma3's tiny sliding window of 4),
    with 2-4 continuations of 1-6 tokens each."""
    rng = random.Random(seed)
    return [
        (
            [BOS] + [rng.randrange(3, 97) for _ in range(length)],
            [[rng.randrange(3, 97) for _ in range(rng.randint(1, 6))] for _ in range(rng.randint(2, 4))],
        )
        for length in (1, 5, 13, 21)
    ]


def assert_same(results, expected, tolerance=1e-5):
    assert len(results) == len(expected)
    assert [value for value, _ in results] == pytest.approx([value for value, _ in expected], abs=tolerance)
    assert [greedy for _, greedy in results] == [greedy for _, greedy in expected]


def sharp_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Scale query/key projections so attention depends visibly on positions (random init is nearly uniform)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(key in name for key in ("q_proj", "k_proj", "query_key_value")):
                param.mul_(8.0)
    return model


@pytest.mark.parametrize("exit_loop", [None, 1])
@pytest.mark.parametrize("family", FAMILIES)
def test_shared_context_scores_equal_separate_forwards(family, exit_loop):
    model = convert_to_recursive(sharp_attention(tiny_model(family)), RecursionSpec(loops=2))
    groups = contexts()
    pairs = [(ctx, cont) for ctx, conts in groups for cont in conts]
    with RecursiveModel(model).exit_after(exit_loop):
        shared = score_shared(model, groups)
        separate = score_batch(model, pairs, max_length=128)
    assert_same(shared, separate)


def test_each_shared_context_runs_through_the_body_once():
    model = sharp_attention(tiny_model("llama"))
    groups = contexts(seed=1)
    pairs = [(ctx, cont) for ctx, conts in groups for cont in conts] + [([BOS, 5, 6], [7])]  # a lone request
    uncached_tokens = []

    def count(_module, _args, kwargs):
        if kwargs.get("cache") is None:
            mask = kwargs.get("attention_mask")
            uncached_tokens.append(int(mask.sum()) if mask is not None else kwargs["input_ids"].numel())

    handle = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        results = score(model, pairs, batch_size=3, max_length=128)
    finally:
        handle.remove()
    assert sum(uncached_tokens) == sum(len(ctx) - 1 for ctx, _ in groups) + 3  # + the lone request's inputs
    assert_same(results, score_batch(model, pairs, max_length=128))


def test_truncated_contexts_fall_back_to_separate_windows():
    """A context that does not fit max_length is cut per request (as HFLM does), so it is not shared."""
    model = tiny_model("llama")
    pairs = [([BOS] + list(range(3, 40)), [50, 51]), ([BOS] + list(range(3, 40)), [60])]
    assert_same(score(model, pairs, batch_size=4, max_length=16), score_batch(model, pairs, max_length=16))


def test_head_position_budget_holds_for_shared_contexts():
    """A context whose choices together exceed max_positions is not scored in one forward."""
    model = tiny_model("llama")
    pairs = [([BOS, 5, 6, 7], [8, 9, 10]), ([BOS, 5, 6, 7], [11, 12, 13])]
    heads = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda _m, _args, logits: heads.append(logits.shape[1])
    )
    try:
        results = score(model, pairs, batch_size=4, max_length=128, max_positions=4)
    finally:
        handle.remove()
    assert max(heads) <= 4
    assert_same(results, score_batch(model, pairs, max_length=128))
