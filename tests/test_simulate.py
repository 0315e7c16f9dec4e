"""The throughput simulator: hand-computed schedules, the real engine's schedules and clock, memory caps."""

from __future__ import annotations

import types

import pytest
import torch

from rrt.serving import ConfidenceExit, Engine, ReplayExit, Request, Trajectory
from rrt.serving import engine as engine_module
from rrt.serving.simulate import (
    Curve,
    ModelCosts,
    measure_costs,
    memory_of,
    simulate,
    trajectory_queue,
)
from tests.test_serving import make_requests, model_for

ONE = Curve.constant(1.0)
ZERO = Curve.constant(0.0)


def costs(
    loops: int,
    shared: int,
    block: Curve,
    head: Curve = ZERO,
    propagate: Curve = ZERO,
    prefill: Curve = ZERO,
    embed: Curve = ZERO,
) -> ModelCosts:
    return ModelCosts(loops, shared, block, head, embed, propagate, prefill)


# Three requests, two slots. Token 0 of each comes from its prefill; the others exit at these loops.
THREE = [Request(0, [1, 2], 3), Request(1, [3, 4], 2), Request(2, [5, 6], 2)]
EXITS = ReplayExit({0: [0, 1, 2], 1: [0, 2], 2: [0, 1]})


def test_three_requests_hand_computed_tokens_per_second():
    """static (full model): {r0, r1} decode 2 steps (r1's finished row rides along), then {r2} 1 step;
    CSB: r2 takes r1's slot after step 1, 2 steps; CDB (B=2, 3 layers a loop): step 1 r0 exits at loop 1,
    step 2 r1 finishes loop 2 and frees its slot for r2, step 3 r0 finishes loop 2 and r2 exits at loop 1."""
    full = costs(1, 6, Curve(((1, 2.0), (2, 3.0))))
    recursive = costs(2, 3, Curve(((1, 1.0), (2, 1.5))))
    static = simulate(full, THREE, max_batch=2, batching="static")
    csb = simulate(full, THREE, max_batch=2)
    cdb = simulate(recursive, THREE, EXITS, max_batch=2)
    assert [(s.steps, s.rows, s.tokens) for s in (static, csb, cdb)] == [(3, 5, 7), (2, 4, 7), (3, 6, 7)]
    assert static.tokens_per_s == 7 / (3.0 + 3.0 + 2.0)
    assert csb.tokens_per_s == 7 / (3.0 + 3.0)
    assert cdb.tokens_per_s == 7 / (1.5 * 3)
    assert cdb.exit_loops == {1: 2, 2: 2}
    assert cdb.tokens_per_s / static.tokens_per_s == pytest.approx(8 / 4.5)


def test_full_mode_adds_head_prefill_embedding_and_propagation():
    """The CDB schedule above: head calls of 1, 1 and 2 rows; the loop-1 exits of r0 (step 1) and
    r2 (step 3) each propagate 3 skipped depths."""
    recursive = costs(
        2,
        3,
        ONE,
        head=Curve(((1, 0.5), (2, 0.75))),
        propagate=Curve.constant(0.25),
        prefill=Curve.constant(2.0),
        embed=Curve.constant(0.125),
    )
    paper = simulate(recursive, THREE, EXITS, max_batch=2)
    full = simulate(recursive, THREE, EXITS, max_batch=2, mode="full")
    assert paper.seconds == paper.block_s == 3.0 and paper.head_s == paper.prefill_s == paper.propagate_s == 0
    assert (full.block_s, full.head_s, full.propagate_s, full.prefill_s) == (3.0, 1.75, 1.5, 6.0)
    emits = 3 + 3  # each prefill's token, and one embedding call per head call
    assert full.seconds == 3.0 + 1.75 + 1.5 + 6.0 + 0.125 * emits
    assert full.head_calls == 3


def test_depth_wise_batching_beats_sequence_batching_only_with_exits():
    """Without exits CDB runs B half-steps per token: at equal per-layer cost it equals CSB; all-loop-1 exits
    halve its steps."""
    requests = [Request(i, [1], 9) for i in range(4)]
    csb = simulate(costs(1, 6, Curve.constant(2.0)), requests, max_batch=2)
    no_exit = simulate(costs(2, 3, ONE), requests, max_batch=2)
    loop1 = simulate(costs(2, 3, ONE), requests, ReplayExit({i: [1] * 9 for i in range(4)}), max_batch=2)
    assert no_exit.seconds == csb.seconds
    assert loop1.seconds == csb.seconds / 2


def plan_for(requests):
    return ReplayExit({r.rid: [1 + (r.rid + k) % 3 // 2 for k in range(r.max_new_tokens)] for r in requests})


@pytest.mark.parametrize(
    "loops,batching,head_batch",
    [
        (None, "static", 1),
        (None, "csb", 1),
        (2, "cdb", 1),
        (2, "cdb", 2),
        (3, "static", 1),
        (3, "cdb", 3),
    ],
)
def test_schedule_equals_the_engines(loops, batching, head_batch):
    model, requests = model_for("llama", loops), make_requests()
    policy = plan_for(requests)
    _, measured = Engine(model, policy, max_batch=3, batching=batching, head_batch=head_batch).generate(requests)
    simulated = simulate(
        costs(loops or 1, 6 // (loops or 1), ONE),
        requests,
        policy,
        max_batch=3,
        batching=batching,
        head_batch=head_batch,
    )
    assert (simulated.steps, simulated.rows, simulated.head_calls, simulated.tokens, simulated.exit_loops) == (
        measured.steps,
        measured.rows,
        measured.head_calls,
        measured.tokens,
        measured.exit_loops,
    )


class _Clock:
    """A clock that advances only when the stack does work, by a known cost per call."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def charging(self, fn, cost):
        def call(*args, **kwargs):
            self.now += cost(*args)
            return fn(*args, **kwargs)

        return call


class _Embedding:
    def __init__(self, module, clock: _Clock, cost):
        self.weight, self.call = module.weight, clock.charging(module, lambda ids: cost(ids.numel()))

    def __call__(self, ids):
        return self.call(ids)


@pytest.mark.parametrize("loops,batching", [(None, "static"), (None, "csb"), (2, "cdb"), (3, "cdb")])
def test_simulated_time_equals_the_engines_own_costs(monkeypatch, loops, batching):
    """The real engine on a clock that charges known costs per layer, head, propagation and embedding call
    reports block/head/propagation/prefill/total seconds; the simulator fed the same costs gives them exactly."""
    model, requests = model_for("gemma3", loops), make_requests()
    policy = plan_for(requests)
    engine, clock = Engine(model, policy, max_batch=3, batching=batching), _Clock()
    stack, depths = engine.stack, 6

    def layer(tokens: int) -> float:  # tokens = rows x positions of one layer call
        return 1.0 + tokens

    def head(rows: int) -> float:
        return 8.0 + 2 * rows

    def propagate(rows: int) -> float:
        return 0.5 + rows / 4

    def embed(tokens: int) -> float:
        return tokens / 8

    stack.run_shared_layer = clock.charging(stack.run_shared_layer, lambda i, h, *_: layer(h.shape[0] * h.shape[1]))
    stack.logits = clock.charging(stack.logits, lambda h: head(h.shape[0]))
    stack.propagate_state = clock.charging(stack.propagate_state, lambda d, h, *_: propagate(h.shape[0]))
    stack.embed = _Embedding(stack.embed, clock, embed)
    monkeypatch.setattr(engine_module, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    _, measured = engine.generate(requests)

    def line(fn, scale=1.0):  # exact: every cost is linear in its size
        return Curve(((1, scale * fn(1)), (100, scale * fn(100))))

    shared = stack.shared
    model_costs = costs(
        stack.loops,
        shared,
        block=Curve(((1, shared * layer(1)), (100, shared * layer(100)))),
        head=line(head),
        propagate=line(propagate),
        embed=line(embed),
        prefill=Curve(((1, depths * layer(1) + head(1) + embed(1)), (100, depths * layer(100) + head(1) + embed(100)))),
    )
    full = simulate(model_costs, requests, policy, max_batch=3, batching=batching, mode="full")
    paper = simulate(model_costs, requests, policy, max_batch=3, batching=batching)
    for part in ("block_s", "head_s", "propagate_s", "prefill_s", "seconds"):
        assert getattr(full, part) == pytest.approx(getattr(measured, part), rel=1e-12), part
    assert paper.seconds == pytest.approx(measured.block_s, rel=1e-12)
    assert (measured.propagate_s > 0) == (loops is not None)


def test_a_smaller_recursive_model_holds_a_larger_batch_under_the_same_cap():
    full, recursive = memory_of(model_for("llama")), memory_of(model_for("llama", loops=2))
    kv = 2 * 6 * 2 * 8 * 4  # keys + values, 6 depths, 2 kv heads, head_dim 8, fp32
    assert full.kv_bytes_per_position == recursive.kv_bytes_per_position == kv
    assert full.weight_bytes == 4 * sum(p.numel() for p in model_for("llama").parameters())
    assert recursive.weight_bytes < full.weight_bytes
    length = 32
    cap = full.weight_bytes + 10 * kv * length + 5
    assert full.max_batch(cap, length) == 10
    assert recursive.max_batch(cap, length) == 10 + (full.weight_bytes - recursive.weight_bytes + 5) // (kv * length)
    assert recursive.max_batch(cap, length) > 10
    with pytest.raises(ValueError, match="not one request's KV cache"):
        full.max_batch(full.weight_bytes + kv * length - 1, length)


def test_measured_costs_describe_the_model():
    models = [model_for("gemma3"), model_for("gemma3", loops=2, rank=4)]
    measured = measure_costs(models, batch_sizes=[4, 1], prompt_lengths=[5, 3], max_len=12, repeats=1)
    assert [(m.loops, m.shared) for m in measured] == [(1, 6), (2, 3)]
    assert [m.memory for m in measured] == [memory_of(m) for m in models]
    for costs_ in measured:
        for curve in (costs_.block, costs_.head, costs_.embed, costs_.propagate):
            assert [n for n, _ in curve.points] == [1, 4] and all(t > 0 for _, t in curve.points)
        assert [n for n, _ in costs_.prefill.points] == [3, 5]


def test_curve_interpolates_between_points_and_is_flat_outside():
    curve = Curve(((2, 1.0), (4, 3.0), (8, 4.0)))
    assert [curve(n) for n in (0, 1, 2, 3, 4, 6, 8, 20)] == [0.0, 1.0, 1.0, 2.0, 3.0, 3.5, 4.0, 4.0]


def test_trajectory_queue_replays_documents_in_turn():
    oracle = [torch.tensor([2, 2, 1, 2, 1, 1]), torch.tensor([1, 1, 1, 2, 2, 2])]
    trajectories = [Trajectory(o, torch.empty(1, 6), torch.empty(1, 6, dtype=torch.bool)) for o in oracle]
    requests, policy = trajectory_queue(trajectories, prompt_tokens=3, count=3, min_new=2, max_new=4, seed=0)
    assert [len(r.prompt) for r in requests] == [3, 3, 3] and all(2 <= r.max_new_tokens <= 4 for r in requests)
    for request in requests:
        assert policy.schedule[request.rid] == oracle[request.rid % 2][2 : 2 + request.max_new_tokens].tolist()
    with pytest.raises(ValueError, match="2 trajectories are shorter than prompt"):
        trajectory_queue(trajectories, prompt_tokens=3, count=1, min_new=2, max_new=5)


def test_bad_settings_fail_clearly():
    model_costs = costs(2, 3, ONE)
    with pytest.raises(ValueError, match="reads the model's outputs"):
        simulate(model_costs, THREE, ConfidenceExit(0.5))
    with pytest.raises(ValueError, match="unknown mode"):
        simulate(model_costs, THREE, mode="approximate")
    with pytest.raises(ValueError, match="unknown batching"):
        simulate(model_costs, THREE, batching="sometimes")
    with pytest.raises(ValueError, match="continuous batching of a recursive model is cdb"):
        simulate(model_costs, THREE, batching="csb")
    with pytest.raises(ValueError, match="head_batch must be in"):
        simulate(model_costs, THREE, max_batch=2, head_batch=3)
