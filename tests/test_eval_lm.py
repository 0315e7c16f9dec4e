"""The 'rrt' lm-eval model: same log-likelihoods as lm-eval's HFLM, static early exit, BOS, clear errors."""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.models.huggingface import HFLM

from rrt.evaluation.harness import task_manager
from rrt.evaluation.lm import RecursiveLM
from rrt.recursive.model import RecursiveModel

TASKS = ["lambada_openai", "hellaswag", "piqa", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]


@pytest.fixture(scope="module")
def requests() -> list[Instance]:
    """Real requests: 3 docs of each paper task, rendered by the harness."""
    tasks = task_manager(TASKS).load(TASKS)["tasks"]
    instances = []
    for task in tasks.values():
        task.build_all_requests(limit=3, rank=0, world_size=1)
        instances += task.instances
    return instances


def test_registered_under_rrt():
    assert get_model("rrt") is RecursiveLM


@pytest.mark.parametrize("exit_loop", [None, 1])
def test_loglikelihoods_match_hflm(model, tokenizer, requests, exit_loop):
    ours = RecursiveLM(model, tokenizer, exit_loop=exit_loop, batch_size=5, progress=False).loglikelihood(requests)
    reference = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, device="cpu")
    with RecursiveModel(model).exit_after(exit_loop):
        expected = reference.loglikelihood(requests, disable_tqdm=True)
    assert len(ours) == len(expected) == len(requests)
    for (value, greedy), (ref_value, ref_greedy) in zip(ours, expected):
        assert value == pytest.approx(ref_value, abs=1e-4)
        assert greedy == ref_greedy


def test_rolling_loglikelihood_matches_hflm_across_windows(model, tokenizer):
    text = "The quick brown fox jumps over the lazy dog. " * 6
    docs = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate([text, "Short one."])]
    ours = RecursiveLM(model, tokenizer, batch_size=3, max_length=16, progress=False).loglikelihood_rolling(docs)
    reference = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=3, max_length=16, device="cpu")
    assert ours == pytest.approx(reference.loglikelihood_rolling(docs, disable_tqdm=True), abs=1e-4)


def test_exit_at_last_loop_is_the_full_model_and_loop_one_differs(model, tokenizer, requests):
    def scores(exit_loop):
        return RecursiveLM(model, tokenizer, exit_loop=exit_loop, progress=False).loglikelihood(requests)

    full = scores(None)
    assert scores(2) == full
    assert scores(1) != full


def test_exit_loop_beyond_the_model_fails_before_compute(model, tokenizer):
    with pytest.raises(ValueError, match=r"exit_loop=3 is outside 1..2"):
        RecursiveLM(model, tokenizer, exit_loop=3)


def test_every_scored_input_starts_with_bos(model, tokenizer, requests):
    """Each context's first forward (no KV cache yet) starts with BOS in every row: left-padded rows at their first
    unmasked token."""
    firsts = []

    def record(_module, _args, kwargs):
        if kwargs.get("cache") is None:
            ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
            starts = mask.argmax(dim=1) if mask is not None else torch.zeros(len(ids), dtype=torch.long)
            firsts.extend(ids[torch.arange(len(ids)), starts].tolist())

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        RecursiveLM(model, tokenizer, progress=False).loglikelihood(requests)
    finally:
        handle.remove()
    assert firsts and set(firsts) == {tokenizer.bos_token_id}


def test_generation_is_refused_with_a_reason(model, tokenizer):
    with pytest.raises(NotImplementedError, match="log-likelihoods only"):
        RecursiveLM(model, tokenizer).generate_until([])
