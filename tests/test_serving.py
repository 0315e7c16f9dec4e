"""The CDB engine against model.generate on tiny random models, exit policies, trajectories, records."""

from __future__ import annotations

import pytest
import torch

from rrt.records import RunRecord
from rrt.recursive import LoRASpec, RecursionSpec, convert_to_recursive
from rrt.recursive.model import RecursiveModel
from rrt.serving import (
    ConfidenceExit,
    DepthStack,
    Engine,
    FullDepth,
    ReplayExit,
    Request,
    Trajectory,
    agreement,
    confidence_exits,
    exit_summary,
    exit_trajectories,
)
from rrt.serving.records import throughput_row, write_throughput
from rrt.serving.workload import oracle_schedule, text_requests
from tests.tiny import tiny_model, tokens


def model_for(family: str, loops: int | None = None, rank: int = 0):
    model = tiny_model(family)
    if loops:
        convert_to_recursive(
            model, RecursionSpec(loops=loops, init="average" if rank else "stepwise", lora=LoRASpec(rank=rank))
        )
    model.generation_config.eos_token_id = None  # the engine decodes exactly max_new_tokens
    model.generation_config.pad_token_id = 0
    return model


def make_requests(n: int = 5) -> list[Request]:
    """Prompts longer than the tiny Gemma 3 sliding window (4), different lengths and budgets."""
    return [Request(i, tokens(1, 3 + 2 * i, seed=i)[0].tolist(), 4 + 3 * i) for i in range(n)]


def reference(model, requests) -> dict[int, list[int]]:
    return {
        r.rid: model.generate(torch.tensor([r.prompt]), max_new_tokens=r.max_new_tokens, do_sample=False)[
            0, len(r.prompt) :
        ].tolist()
        for r in requests
    }


@pytest.mark.parametrize("family", ["gemma3", "llama", "qwen2", "gemma"])
@pytest.mark.parametrize("loops", [None, 2, 3])
def test_full_depth_engine_equals_generate_with_refill(family, loops):
    model, requests = model_for(family, loops), make_requests()
    outputs, stats = Engine(model, FullDepth(), max_batch=2).generate(requests)
    assert outputs == reference(model, requests)
    assert stats.tokens == sum(r.max_new_tokens for r in requests)
    assert stats.exit_loops == {loops or 1: stats.tokens - len(requests)}


def relaxed_model(variant: str = "lora", loops: int = 2):
    """Tiny Gemma 3 (6 layers: at B=2 the depths of one layer position differ in attention type), Average init, so
    every depth's SVD-initialised adapter differs."""
    model = tiny_model("gemma3")
    convert_to_recursive(model, RecursionSpec(loops=loops, init="average", lora=LoRASpec(rank=4, adapter=variant)))
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = None, 0
    return model


@pytest.mark.parametrize("adapters", ["stacked", "grouped"])
def test_relaxed_model_equals_generate(adapters):
    model, requests = relaxed_model(), make_requests()
    stack = DepthStack(model, adapters)
    assert len({d.group for d in stack.depths}) == 6  # every depth has its own adapters
    assert sum(s is not None for s in stack.stacked) == (stack.shared if adapters == "stacked" else 0)
    outputs, _ = Engine(model, max_batch=3, adapters=adapters).generate(requests)
    assert outputs == reference(model, requests)


@pytest.mark.parametrize(("variant", "loops"), [("lora", 2), ("lora", 3), ("lamda", 2)])
def test_stacked_adapters_serve_mixed_loop_steps_as_grouped_calls_do(variant, loops):
    """With exits every step mixes rows at different loops: one stacked call per layer gives the tokens of one
    call per loop."""
    model, requests = relaxed_model(variant, loops), make_requests()
    mixed = ReplayExit({r.rid: [1 + (r.rid + k) % loops for k in range(r.max_new_tokens)] for r in requests})
    stacked_out, stacked = Engine(model, mixed, max_batch=3, adapters="stacked").generate(requests)
    grouped_out, grouped = Engine(model, mixed, max_batch=3, adapters="grouped").generate(requests)
    assert stacked_out == grouped_out
    assert stacked.exit_loops == grouped.exit_loops and len(stacked.exit_loops) == loops


def test_stacked_adapters_give_each_row_its_own_loops_layer():
    """One stacked call over rows at every loop equals each row run through its own depth's layer."""
    model = model_for("llama", loops=3, rank=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    stacked, grouped = DepthStack(model, "stacked"), DepthStack(model, "grouped")
    hidden = torch.randn(6, 1, 32)
    slots, loops, positions = (
        torch.arange(6),
        torch.tensor([0, 1, 2, 2, 1, 0]),
        torch.tensor([[3], [1], [4], [0], [2], [5]]),
    )
    with torch.inference_mode():
        pools = stacked.new_pool(6, 8), grouped.new_pool(6, 8)
        for i in range(stacked.shared):
            one = stacked.run_shared_layer(i, hidden, slots, loops, positions, pools[0])
            per_loop = grouped.run_shared_layer(i, hidden, slots, loops, positions, pools[1])
            torch.testing.assert_close(one, per_loop, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pools[0].keys, pools[1].keys, rtol=1e-5, atol=1e-6)


def test_static_batching_waits_for_the_longest_request():
    model = model_for("llama")
    requests = [Request(i, tokens(1, 4, seed=i)[0].tolist(), n) for i, n in enumerate([2, 8, 2, 2])]
    static_out, static = Engine(model, max_batch=2, batching="static").generate(requests)
    continuous_out, continuous = Engine(model, max_batch=2).generate(requests)
    assert static_out == continuous_out == reference(model, requests)
    assert (static.steps, static.rows) == (7 + 1, 2 * 7 + 2 * 1)  # batch {2, 8} runs 7 decode steps, then {2, 2}
    assert (continuous.steps, continuous.rows) == (7, 10)  # short requests refill the slot beside the long one


def test_state_propagation_writes_what_the_full_layer_writes():
    stack = DepthStack(model_for("gemma3", loops=2))
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


def agreeing_loops_model():
    """B=2 relaxed Gemma 3 whose second loop adds exactly zero (o_proj and down_proj adapters cancel the
    shared weight), so every loop predicts the final token and copied exit states are the true states."""
    model = model_for("gemma3", loops=2, rank=64)  # rank capped at min(d_in, d_out) = 32
    stack = DepthStack(model)
    with torch.no_grad():
        for depth in range(stack.shared, stack.num_depths):
            layer = stack.depths[depth].layer
            for linear in (layer.self_attn.o_proj, layer.mlp.down_proj):
                weight = linear.base.weight
                eye = torch.eye(linear.rank)
                if linear.rank == weight.shape[1]:
                    linear.lora_A.copy_(eye), linear.lora_B.copy_(-weight)
                else:
                    linear.lora_A.copy_(-weight), linear.lora_B.copy_(eye)
    return model


class _Tokenizer:
    """Whitespace-separated ids, enough for exit_trajectories on tiny models."""

    def __call__(self, text, return_tensors=None):
        ids = [int(t) for t in text.split()]
        return type("Encoding", (), {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids})


def documents(n: int = 3, length: int = 20) -> list[str]:
    return [" ".join(map(str, tokens(1, length, seed=10 + i)[0].tolist())) for i in range(n)]


def test_oracle_and_confidence_exits_keep_outputs_when_loops_agree():
    model, requests = agreeing_loops_model(), make_requests()
    trajectories = exit_trajectories(model, _Tokenizer(), documents())
    assert all(bool((t.oracle == 1).all()) for t in trajectories)
    schedule = {r.rid: [1] * r.max_new_tokens for r in requests}
    expected = reference(model, requests)
    decode_tokens = sum(r.max_new_tokens - 1 for r in requests)
    for policy in (ReplayExit(schedule), ConfidenceExit(0.0)):
        outputs, stats = Engine(model, policy, max_batch=2).generate(requests)
        assert outputs == expected
        assert stats.exit_loops == {1: decode_tokens}
        assert stats.propagate_s > 0


def test_confidence_threshold_above_one_never_exits_early():
    model, requests = model_for("gemma3", loops=2), make_requests(3)
    outputs, stats = Engine(model, ConfidenceExit(1.01), max_batch=2).generate(requests)
    assert outputs == reference(model, requests)
    assert set(stats.exit_loops) == {2}


def test_oracle_schedule_exits_each_token_at_its_planned_loop():
    model = model_for("llama", loops=3)
    request = Request(0, [5, 6, 7], 5)
    plan = [None, 1, 3, 2, 1]  # token 0 comes from the prefill
    _, stats = Engine(model, ReplayExit({0: plan}), max_batch=1).generate([request])
    assert stats.exit_loops == {1: 2, 2: 1, 3: 1}
    assert stats.steps == 1 + 3 + 2 + 1


def test_trajectories_match_static_exit_predictions():
    model = model_for("gemma3", loops=2)
    docs = documents()
    trajectories = exit_trajectories(model, _Tokenizer(), docs)
    for document, trajectory in zip(docs, trajectories):
        ids = _Tokenizer()(document, return_tensors="pt").input_ids
        with torch.inference_mode():
            final = model(input_ids=ids).logits[0].argmax(-1)
            with RecursiveModel(model).exit_after(1):
                loop1 = model(input_ids=ids).logits[0].argmax(-1)
        assert torch.equal(trajectory.oracle, torch.where(loop1 == final, 1, 2))
        assert torch.equal(trajectory.agrees[0], loop1 == final)
    summary = exit_summary([t.oracle for t in trajectories], loops=2)
    assert summary["exit_frac_loop1"] + summary["exit_frac_loop2"] == pytest.approx(1.0)
    assert summary["tokens"] == 60
    assert agreement(trajectories, [t.oracle for t in trajectories]) == 1.0
    never = [confidence_exits(t, 1.01) for t in trajectories]
    assert all(bool((e == 2).all()) for e in never)


def test_throughput_rows_land_in_the_run_record(tmp_path):
    RunRecord.create(tmp_path, setting={"model": "tiny", "variant": "recursive"})
    model = model_for("llama", loops=2)
    _, stats = Engine(model, max_batch=2).generate(make_requests(2))
    write_throughput(tmp_path, [throughput_row("cdb", "none", stats, max_batch=2, requests=2)])
    write_throughput(tmp_path, [throughput_row("cdb", "none", stats, max_batch=2, requests=2)])  # replaces
    rows = RunRecord.load(tmp_path).data["throughput"]
    assert len(rows) == 1
    assert rows[0]["engine"] == "cdb" and rows[0]["tokens_per_s"] == stats.tokens_per_s
    assert rows[0]["mean_exit_loop"] == 2.0
    with pytest.raises(FileNotFoundError, match="no record.json"):
        write_throughput(tmp_path / "missing", [])


def test_unsupported_family_and_settings_fail_clearly(monkeypatch):
    monkeypatch.setattr("rrt.serving.stack.SUPPORTED_FAMILIES", ("llama",))  # every registered family is served
    with pytest.raises(ValueError, match="serving supports families"):
        DepthStack(tiny_model("gemma"))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="unknown batching"):
        Engine(model_for("llama"), batching="sometimes")
    with pytest.raises(ValueError, match="continuous batching of a plain model is csb"):
        Engine(model_for("llama"), batching="cdb")
    with pytest.raises(ValueError, match="head_batch must be in"):
        Engine(model_for("llama"), max_batch=2, head_batch=3)
    with pytest.raises(ValueError, match="unknown attention"):
        Engine(model_for("llama"), attention="flash")


@pytest.mark.parametrize("family", ["gemma3", "llama"])
def test_per_item_attention_equals_generate(family):
    model, requests = model_for(family, loops=2), make_requests()
    outputs, _ = Engine(model, max_batch=3, attention="per_item").generate(requests)
    assert outputs == reference(model, requests)
    assert model.config._attn_implementation == "sdpa"  # restored after the run


def test_batched_head_waits_for_exits_and_keeps_outputs():
    model, requests = model_for("gemma3", loops=2), make_requests()
    assert Engine(model, max_batch=3, head_batch=3).generate(requests)[0] == reference(model, requests)
    mixed = ReplayExit({r.rid: [1 + (r.rid + k) % 3 // 2 for k in range(r.max_new_tokens)] for r in requests})
    eager_out, eager = Engine(model, mixed, max_batch=3).generate(requests)
    batched_out, batched = Engine(model, mixed, max_batch=3, head_batch=3).generate(requests)
    assert batched_out == eager_out  # waiting for the head changes when tokens are emitted, not which
    assert batched.exit_loops == eager.exit_loops and set(eager.exit_loops) == {1, 2}
    assert batched.head_calls < eager.head_calls


def test_workload_prompts_and_oracle_schedule_offsets():
    docs = ["1 2 3", "4 5 6 7 8 9 10 20 21 22 23 24", "11 12 13 14 15 16 17 18"]
    requests, windows = text_requests(_Tokenizer(), docs, count=3, prompt_tokens=3, min_new=2, max_new=3, seed=0)
    # 6-token windows: the first of every document long enough, then the second ones
    assert [w.tolist() for w in windows] == [[4, 5, 6, 7, 8, 9], [11, 12, 13, 14, 15, 16], [10, 20, 21, 22, 23, 24]]
    assert [r.prompt for r in requests] == [[4, 5, 6], [11, 12, 13], [10, 20, 21]]
    assert all(2 <= r.max_new_tokens <= 3 for r in requests)
    oracle = torch.tensor([2, 2, 1, 2, 1, 1, 2, 2])  # exit loop of the prediction at each position
    trajectories = [Trajectory(oracle, torch.empty(1, 8), torch.empty(1, 8, dtype=torch.bool))] * 2
    schedule = oracle_schedule(trajectories, [Request(0, [4, 5, 6], 3), Request(1, [1], 2)])
    assert schedule == {0: [1, 2, 1], 1: [2, 2]}  # token k is predicted at position len(prompt) - 1 + k
    with pytest.raises(ValueError, match="the documents hold only 3 windows of 6 tokens"):
        text_requests(_Tokenizer(), docs, count=4, prompt_tokens=3, min_new=2, max_new=3)


class _BOSTokenizer(_Tokenizer):
    bos_token_id = 99

    def __call__(self, text, return_tensors=None):
        return super().__call__(f"99 {text}", return_tensors)


def test_workload_windows_of_a_bos_tokenizer_all_start_with_bos():
    requests, windows = text_requests(
        _BOSTokenizer(), ["1 2 3 4 5 6 7 8 9 10"], 3, prompt_tokens=2, min_new=2, max_new=2
    )
    assert [w.tolist() for w in windows] == [[99, 1, 2, 3], [99, 4, 5, 6], [99, 7, 8, 9]]
    assert [r.prompt for r in requests] == [[99, 1], [99, 4], [99, 7]]
