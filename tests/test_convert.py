"""Conversion contracts: tying by shared storage, init values, relaxation exactness, save/load."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from rrt.models import family_for
from rrt.recursive import LoRASpec, RecursionSpec, convert_to_recursive, count_params
from rrt.recursive.io import load_converted, save_converted
from rrt.recursive.relax import DepthLaMDALinear, DepthLoRALinear, svd_factors
from tests.tiny import tiny_model, tokens

FAMILIES = ["gemma3", "gemma", "llama", "qwen2", "gpt_neox"]


def layer_params(model, depth):
    layers = family_for(model.config).layer_list(model)
    return dict(layers[depth].named_parameters())


def equalize_norms_and_biases(model):
    """Give every layer layer 0's norms and biases, so only the linear weights differ between depths."""
    layers = family_for(model.config).layer_list(model)
    reference = {n: p for n, p in layers[0].named_parameters() if p.ndim == 1}
    with torch.no_grad():
        for layer in layers[1:]:
            for name, param in layer.named_parameters():
                if param.ndim == 1:
                    param.copy_(reference[name])


@pytest.mark.parametrize("family", FAMILIES)
def test_tied_parameters_share_storage_across_loops(family):
    model = convert_to_recursive(tiny_model(family, 6), RecursionSpec(loops=2))
    for depth in range(3):
        first, second = layer_params(model, depth), layer_params(model, depth + 3)
        assert first.keys() == second.keys()
        for name in first:
            assert first[name] is second[name]
            assert first[name].data_ptr() == second[name].data_ptr()
        assert (
            layer_params(model, depth)[next(iter(first))] is not layer_params(model, (depth + 1) % 3)[next(iter(first))]
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_count_is_k_layers(family):
    original = tiny_model(family, 6)
    full = count_params(original)
    per_layer = sum(p.numel() for p in family_for(original.config).layer_list(original)[0].parameters())
    model = convert_to_recursive(original, RecursionSpec(loops=3))
    counts = count_params(model)
    assert counts.non_embedding == full.non_embedding - 4 * per_layer  # 6 layers -> 2 shared
    assert counts.embedding == full.embedding  # embeddings and head untouched


def test_one_optimizer_step_moves_every_loop_together():
    model = convert_to_recursive(tiny_model("llama", 4), RecursionSpec(loops=2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(tokens(), labels=tokens()).loss.backward()
    optimizer.step()
    w0 = layer_params(model, 0)["self_attn.q_proj.weight"]
    w2 = layer_params(model, 2)["self_attn.q_proj.weight"]
    assert torch.equal(w0, w2) and w0.data_ptr() == w2.data_ptr()


@pytest.mark.parametrize("how", ["deepcopy", "to", "save_load"])
def test_ties_survive_copy_move_and_reload(how, tmp_path):
    model = convert_to_recursive(tiny_model("gemma3", 6), RecursionSpec(loops=2, lora=LoRASpec(rank=4)))
    if how == "deepcopy":
        other = copy.deepcopy(model)
    elif how == "to":
        other = model.to(torch.float64).to(torch.float32)
    else:
        other = load_converted(save_converted(model, tmp_path / "m"))
        with torch.no_grad():
            assert torch.equal(model(tokens()).logits, other(tokens()).logits)
    for depth in range(3):
        a, b = layer_params(other, depth), layer_params(other, depth + 3)
        assert a["self_attn.q_proj.base.weight"].data_ptr() == b["self_attn.q_proj.base.weight"].data_ptr()
        assert a["self_attn.q_proj.lora_A"].data_ptr() != b["self_attn.q_proj.lora_A"].data_ptr()
    assert count_params(other) == count_params(model)


def test_stepwise_copies_source_layers_and_average_means_groups():
    original = tiny_model("llama", 6)
    before = [dict((n, p.detach().clone()) for n, p in layer_params(original, d).items()) for d in range(6)]
    step = convert_to_recursive(copy.deepcopy(original), RecursionSpec(loops=2, init="stepwise"))
    for position, source in enumerate([0, 2, 5]):
        for name, value in layer_params(step, position).items():
            assert torch.equal(value, before[source][name])
    avg = convert_to_recursive(copy.deepcopy(original), RecursionSpec(loops=2, init="average"))
    for position in range(3):
        for name, value in layer_params(avg, position).items():
            torch.testing.assert_close(value, (before[position][name] + before[position + 3][name]) / 2)


@pytest.mark.parametrize("norm_init", ["average", "choice", "zero"])
def test_norm_init_variants(norm_init):
    original = tiny_model("llama", 4)
    before = [layer_params(original, d)["input_layernorm.weight"].detach().clone() for d in range(4)]
    model = convert_to_recursive(original, RecursionSpec(loops=2, init="average", norm_init=norm_init))
    got = layer_params(model, 1)["input_layernorm.weight"]
    expected = {"average": (before[1] + before[3]) / 2, "choice": before[1], "zero": torch.zeros_like(before[1])}
    torch.testing.assert_close(got, expected[norm_init])
    torch.testing.assert_close(
        layer_params(model, 1)["self_attn.q_proj.weight"].mean(),
        layer_params(model, 3)["self_attn.q_proj.weight"].mean(),
    )


def test_random_init_has_no_pretrained_weights():
    original = tiny_model(
        "llama", 4, seed=3
    )  # seed 0 is also the random init's seed: it would rebuild the same weights
    q = [layer_params(original, d)["self_attn.q_proj.weight"].detach().clone() for d in range(4)]
    emb = original.get_input_embeddings().weight.detach().clone()
    model = convert_to_recursive(original, RecursionSpec(loops=2, init="random"))
    shared = layer_params(model, 0)["self_attn.q_proj.weight"]
    assert all(not torch.equal(shared, w) for w in q)
    assert not torch.equal(model.get_input_embeddings().weight, emb)


@pytest.mark.parametrize("family", FAMILIES)
def test_rank_zero_equals_strict_recursive(family):
    original = tiny_model(family, 6)
    strict = convert_to_recursive(copy.deepcopy(original), RecursionSpec(loops=2))
    relaxed = convert_to_recursive(copy.deepcopy(original), RecursionSpec(loops=2, lora=LoRASpec(rank=0)))
    assert not any(isinstance(m, DepthLoRALinear) for m in relaxed.modules())
    with torch.no_grad():
        assert torch.equal(strict(tokens()).logits, relaxed(tokens()).logits)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("init", ["stepwise", "average"])
def test_full_rank_reproduces_original_logits(family, init):
    original = tiny_model(family, 6)
    equalize_norms_and_biases(original)
    with torch.no_grad():
        expected = original(tokens()).logits
    relaxed = convert_to_recursive(original, RecursionSpec(loops=2, init=init, lora=LoRASpec(rank=10_000)))
    with torch.no_grad():
        got = relaxed(tokens()).logits
    assert (got - expected).abs().max() <= 1e-4
    strict = convert_to_recursive(tiny_model(family, 6), RecursionSpec(loops=2, init=init))
    with torch.no_grad():
        assert (strict(tokens()).logits - expected).abs().max() > 1e-3  # the adapters do the work


def test_svd_init_puts_singular_values_in_b_with_scale_one():
    original = tiny_model("llama", 4)
    w1 = layer_params(original, 1)["mlp.down_proj.weight"].detach().clone()
    w3 = layer_params(original, 3)["mlp.down_proj.weight"].detach().clone()
    model = convert_to_recursive(original, RecursionSpec(loops=2, init="average", lora=LoRASpec(rank=5)))
    layers = family_for(model.config).layer_list(model)
    adapter = layers[3].mlp.down_proj
    shared = (w1 + w3) / 2
    u, s, vh = torch.linalg.svd(w3 - shared, full_matrices=False)
    torch.testing.assert_close(adapter.lora_B, u[:, :5] * s[:5])
    torch.testing.assert_close(adapter.lora_A, vh[:5])
    x = torch.randn(3, w3.shape[1])
    best_rank5 = shared + (u[:, :5] * s[:5]) @ vh[:5]
    torch.testing.assert_close(adapter(x), x @ best_rank5.T, atol=1e-5, rtol=1e-5)


def test_zero_residual_gets_standard_init_and_ranks_are_capped():
    # Stepwise 4 -> 2 takes layers 0 and 3: depths 0 and 3 equal their source, so their residual is zero.
    model = convert_to_recursive(tiny_model("llama", 4), RecursionSpec(loops=2, lora=LoRASpec(rank=1000)))
    layers = family_for(model.config).layer_list(model)
    for depth in (0, 3):
        adapter = layers[depth].self_attn.q_proj
        assert torch.count_nonzero(adapter.lora_B) == 0 and torch.count_nonzero(adapter.lora_A) > 0
    assert torch.count_nonzero(layers[1].self_attn.q_proj.lora_B) > 0
    k_proj = layers[1].self_attn.k_proj  # 32 -> 16 (2 kv heads x 8)
    assert k_proj.rank == min(k_proj.in_features, k_proj.out_features) == 16


def test_per_component_ranks_and_fused_qkv_factor():
    spec = RecursionSpec(loops=2, lora=LoRASpec(rank=8, ranks={"q": 2, "kv": 4, "o": None, "ffn": 6}))
    layers = family_for(tiny_model("llama").config).layer_list(convert_to_recursive(tiny_model("llama"), spec))
    attn, mlp = layers[1].self_attn, layers[1].mlp
    assert (attn.q_proj.rank, attn.k_proj.rank, attn.v_proj.rank, attn.o_proj.rank) == (2, 4, 4, 8)
    assert (mlp.gate_proj.rank, mlp.up_proj.rank, mlp.down_proj.rank) == (6, 6, 6)
    neox = convert_to_recursive(tiny_model("gpt_neox"), RecursionSpec(loops=2, lora=LoRASpec(rank=4)))
    assert family_for(neox.config).layer_list(neox)[1].attention.query_key_value.rank == 6  # 1.5 r


def test_sequence_looping_ties_consecutive_depths():
    model = convert_to_recursive(tiny_model("llama", 6), RecursionSpec(loops=2, looping="sequence"))
    assert layer_params(model, 0)["mlp.up_proj.weight"] is layer_params(model, 1)["mlp.up_proj.weight"]
    assert layer_params(model, 1)["mlp.up_proj.weight"] is not layer_params(model, 2)["mlp.up_proj.weight"]


def test_lamda_adapter_starts_at_the_svd_fit_and_trains_only_s_and_b():
    original = tiny_model("llama", 4)
    lora = convert_to_recursive(copy.deepcopy(original), RecursionSpec(loops=2, init="average", lora=LoRASpec(rank=4)))
    lamda = convert_to_recursive(
        original, RecursionSpec(loops=2, init="average", lora=LoRASpec(rank=4, adapter="lamda"))
    )
    with torch.no_grad():
        torch.testing.assert_close(lora(tokens()).logits, lamda(tokens()).logits, atol=1e-5, rtol=1e-5)
    adapter = family_for(lamda.config).layer_list(lamda)[1].mlp.up_proj
    assert isinstance(adapter, DepthLaMDALinear)
    assert not adapter.lora_A.requires_grad and adapter.lora_S.requires_grad and adapter.lora_B.requires_grad


def test_lowrank_svd_is_close_to_full_svd_on_the_leading_directions():
    residual = torch.randn(64, 48) @ torch.diag(torch.logspace(0, -3, 48)) @ torch.randn(48, 48)
    u, s, vh = svd_factors(residual, 8, "full")
    ul, sl, vhl = svd_factors(residual, 8, "lowrank")
    torch.testing.assert_close(sl, s, rtol=1e-3, atol=1e-3)
    full_err = torch.linalg.norm(residual - (u * s) @ vh)
    low_err = torch.linalg.norm(residual - (ul * sl) @ vhl)
    assert low_err <= full_err * 1.01


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generation_equals_uncached(family):
    model = convert_to_recursive(tiny_model(family, 6), RecursionSpec(loops=2, lora=LoRASpec(rank=4)))
    prompt = tokens(1, 5)
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kwargs)
        uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_gemma3_depths_keep_their_own_attention_type():
    # Decision (rrt/conf/recursion/default.yaml): attention type follows the effective depth, as in the
    # original model; the shared weights serve a sliding depth in one loop and a full one in another.
    model = convert_to_recursive(tiny_model("gemma3", 6), RecursionSpec(loops=2))
    layers = family_for(model.config).layer_list(model)
    assert [layer.self_attn.sliding_window for layer in layers] == [4, 4, 4, 4, 4, None]
    assert layers[2].self_attn.q_proj is layers[5].self_attn.q_proj


@pytest.mark.parametrize(
    "spec,message",
    [
        (RecursionSpec(loops=4), "valid values: [1, 2, 3, 6]"),
        (RecursionSpec(init="middle"), "supported: ['stepwise', 'average', 'lower', 'upper', 'random']"),
        (RecursionSpec(lora=LoRASpec(rank=-1)), "ranks must be >= 0"),
        (RecursionSpec(looping="zigzag"), "unknown looping"),
    ],
)
def test_bad_specs_fail_before_any_weight_changes(spec, message):
    model = tiny_model("llama", 6)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError) as error:
        convert_to_recursive(model, spec)
    assert message in str(error.value)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_unknown_family_lists_supported():
    from transformers import AutoConfig

    with pytest.raises(ValueError, match="supported model_types"):
        family_for(AutoConfig.for_model("bert"))


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_random_init_of_a_reloaded_checkpoint_replaces_every_weight(tmp_path, family):
    """transformers 5.x marks from_pretrained weights as initialised; a random init must not keep them."""
    tiny_model(family, 4, seed=3).save_pretrained(tmp_path)
    checkpoint = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(tmp_path).state_dict().items()}
    model = convert_to_recursive(AutoModelForCausalLM.from_pretrained(tmp_path), RecursionSpec(loops=2, init="random"))
    assert not torch.equal(model.get_input_embeddings().weight, checkpoint["model.embed_tokens.weight"])
    for depth in range(4):
        for name, value in layer_params(model, depth).items():
            for source in range(4):
                assert not torch.equal(value, checkpoint[f"model.layers.{source}.{name}"]), (depth, name, source)


@pytest.mark.parametrize(
    ("ranks", "expected"), [({"q": 4, "kv": 2}, 4), ({"q": 4, "kv": None}, 10), ({"q": None, "kv": 0}, 4)]
)
def test_fused_qkv_rank_honours_the_q_and_kv_groups(ranks, expected):
    """Pythia's query_key_value gets the rank whose adapter costs what separate q, k, v adapters would."""
    spec = RecursionSpec(loops=2, lora=LoRASpec(rank=8, ranks={**ranks, "o": None, "ffn": None}))
    neox = convert_to_recursive(tiny_model("gpt_neox"), spec)
    qkv = family_for(neox.config).layer_list(neox)[1].attention.query_key_value
    assert qkv.rank == expected
    d = qkv.in_features  # q, k and v are each d wide (no GQA in GPT-NeoX)
    separate = sum(spec.lora.rank_for(g) * (d + d) for g in ("q", "kv", "kv"))
    assert qkv.rank * (qkv.in_features + qkv.out_features) == separate
