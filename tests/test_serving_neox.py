"""GPT-NeoX (Pythia) in the CDB engine: fused QKV, partial rotary, parallel residual, ``layer_past`` caches."""

from __future__ import annotations

import pytest
import torch

from rrt.serving import DepthStack, Engine, ReplayExit
from tests.test_serving import make_requests, model_for, reference


@pytest.mark.parametrize("loops,rank", [(None, 0), (2, 0), (3, 0), (2, 4)])
def test_engine_equals_generate_on_gpt_neox(loops, rank):
    model, requests = model_for("gpt_neox", loops, rank), make_requests()
    outputs, stats = Engine(model, max_batch=2).generate(requests)
    assert outputs == reference(model, requests)
    assert stats.exit_loops == {loops or 1: stats.tokens - len(requests)}


def test_per_item_attention_and_batched_head_equal_generate_on_gpt_neox():
    model, requests = model_for("gpt_neox", loops=2), make_requests()
    expected = reference(model, requests)
    assert Engine(model, max_batch=3, attention="per_item").generate(requests)[0] == expected
    assert Engine(model, max_batch=3, head_batch=3).generate(requests)[0] == expected


def test_state_propagation_writes_what_the_gpt_neox_layer_writes():
    stack = DepthStack(model_for("gpt_neox", loops=2))
    assert stack.head_dim == 8 and stack.kv_heads == 4
    hidden = torch.randn(2, 1, 32)
    slots, positions = torch.tensor([0, 1]), torch.tensor([[5], [2]])
    for depth in range(stack.num_depths):
        by_layer, by_projection = stack.new_pool(2, 8), stack.new_pool(2, 8)
        loops, i = divmod(depth, stack.shared)
        with torch.inference_mode():
            stack.run_shared_layer(i, hidden, slots, torch.tensor([loops, loops]), positions, by_layer)
            stack.propagate_state(depth, hidden, slots, positions, by_projection)
        torch.testing.assert_close(by_projection.keys, by_layer.keys, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(by_projection.values, by_layer.values, rtol=1e-5, atol=1e-6)


def test_oracle_exits_run_on_gpt_neox():
    model, requests = model_for("gpt_neox", loops=2), make_requests(3)
    plan = ReplayExit({r.rid: [1 + k % 2 for k in range(r.max_new_tokens)] for r in requests})
    _, stats = Engine(model, plan, max_batch=2).generate(requests)
    assert set(stats.exit_loops) == {1, 2} and stats.propagate_s > 0
