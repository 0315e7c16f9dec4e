"""The CDB engine on the real gemma-3-270m (recursive B=2): greedy outputs equal model.generate per request."""

from __future__ import annotations

import pytest
import torch

from rrt.assets import load_pretrained, load_tokenizer
from rrt.recursive import RecursionSpec, convert_to_recursive
from rrt.serving import Engine, Request

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_cdb_engine_equals_generate_on_recursive_gemma3_270m():
    tokenizer = load_tokenizer("gemma3_270m")
    model = convert_to_recursive(load_pretrained("gemma3_270m"), RecursionSpec(loops=2))
    model.generation_config.eos_token_id = None  # the engine decodes exactly max_new_tokens
    prompts = ["The capital of France is", "Call me Ishmael. Some years ago", "In 1801 the President said that"]
    requests = [Request(i, tokenizer(p).input_ids, 5 + 2 * i) for i, p in enumerate(prompts)]
    outputs, stats = Engine(model, max_batch=2).generate(requests)  # 3 requests, 2 slots: one refill
    for request in requests:
        expected = model.generate(
            torch.tensor([request.prompt]), max_new_tokens=request.max_new_tokens, do_sample=False
        )
        assert outputs[request.rid] == expected[0, len(request.prompt) :].tolist()
    assert stats.exit_loops == {2: sum(r.max_new_tokens - 1 for r in requests)}
