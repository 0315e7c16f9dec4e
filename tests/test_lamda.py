"""LaMDA and LaMDA++ as relaxations: init, frozen-means-frozen under AdamW, rank allocation, save/load, DDP."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

from rrt.errors import UserError
from rrt.factory.plan import plan_run
from rrt.factory.student import build_student
from rrt.models import family_for
from rrt.recursive import (
    LoRASpec,
    RecursionSpec,
    convert_to_recursive,
    count_params,
    count_params_from_config,
)
from rrt.recursive.allocation import adapter_params, allocate_from_residuals
from rrt.recursive.convert import recursion_spec_of
from rrt.recursive.io import load_converted, save_converted, saved_spec
from rrt.recursive.lamda import last_update_steps
from rrt.recursive.relax import DepthLaMDALinear
from rrt.training.optim import build_optimizer, param_groups, updated_scalars
from rrt.training.setting import relaxation
from tests.helpers import (
    TINY,
    compose_train,
    losses_by_step,
    run_train,
    single_record,
)
from tests.tiny import tiny_model, tokens


def relaxed(adapter: str = "lamda", rank: int = 4, init: str = "average", **lora) -> torch.nn.Module:
    spec = RecursionSpec(loops=2, init=init, lora=LoRASpec(rank=rank, adapter=adapter, **lora))
    return convert_to_recursive(tiny_model("llama", 4), spec)


def lamda_adapters(model) -> list[DepthLaMDALinear]:
    return [m for m in model.modules() if isinstance(m, DepthLaMDALinear)]


def test_step0_logits_equal_the_svd_lora_model():
    lora = relaxed("lora")
    with torch.no_grad():
        for model in (relaxed("lamda"), relaxed("lamda", freeze_shared=True)):
            torch.testing.assert_close(model(tokens()).logits, lora(tokens()).logits, atol=1e-5, rtol=1e-5)


def test_zero_residual_is_an_exact_noop_that_still_learns():
    model = relaxed("lamda", init="lower")  # depths 0..K-1 are their own source layer: zero residual
    strict = convert_to_recursive(tiny_model("llama", 4), RecursionSpec(loops=2, init="lower"))
    first = family_for(model.config).layer_list(model)[0].mlp.up_proj
    assert not torch.any(first.delta_weight())
    model(tokens()).logits.square().mean().backward()
    assert first.lora_S.grad.abs().sum() > 0
    with torch.no_grad():  # the residual of depth 0 is zero, so its adapter adds nothing
        x = torch.randn(3, first.in_features)
        torch.testing.assert_close(first(x), strict.model.layers[0].mlp.up_proj(x), atol=0, rtol=0)


def train_steps(model, steps: int, total_steps: int, freeze: bool = True):
    """AdamW (momentum and weight decay on) over ``steps`` steps; the adapters' A and B after each step."""
    factory = partial(torch.optim.AdamW, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    if freeze:
        optimizer, freezer = build_optimizer(model, factory, total_steps)
    else:
        optimizer, freezer = factory(param_groups(model)), None
    history = [[(m.lora_A.detach().clone(), m.lora_B.detach().clone()) for m in lamda_adapters(model)]]
    updates = []
    for step in range(1, steps + 1):
        model(tokens(seed=step)).logits.square().mean().backward()
        if freeze:
            freezer.mask_gradients()
        else:  # the official code's freeze: zeroed gradients (AdamW still moves the weights)
            for m in lamda_adapters(model):
                m.lora_B.grad[:, : sum(s < step for s in last_update_steps(m.rank, total_steps // 2))] = 0
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        updates.append(updated_scalars(optimizer, freezer, step))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append([(m.lora_A.detach().clone(), m.lora_B.detach().clone()) for m in lamda_adapters(model)])
    return history, updates, optimizer


def test_a_never_changes_and_each_b_column_freezes_exactly_at_its_step_under_adamw():
    model = relaxed("lamda", rank=4, lamda_freeze_b_at=0.5)  # 8 steps: t_i = 4, column j last updated at step j+1
    history, updates, _ = train_steps(model, steps=8, total_steps=8)
    schedule = last_update_steps(4, 4)
    assert schedule == [1, 2, 3, 4]
    for index in range(len(lamda_adapters(model))):
        assert all(torch.equal(history[0][index][0], h[index][0]) for h in history)  # A: bitwise identical
        for column, last in enumerate(schedule):
            for step in range(1, 9):
                before, after = history[step - 1][index][1][:, column], history[step][index][1][:, column]
                assert torch.equal(before, after) == (step > last), (index, column, step)
    # the scalar updates the optimizer made: every trainable scalar, less B's frozen columns
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows = sum(m.lora_B.shape[0] for m in lamda_adapters(model))
    assert updates == [trainable - rows * sum(s < step for s in schedule) for step in range(1, 9)]


def test_frozen_columns_keep_their_adamw_moments():
    model = relaxed("lamda", rank=4, lamda_freeze_b_at=0.5)
    _, _, optimizer = train_steps(model, steps=2, total_steps=8)  # column 0 frozen for step 2
    state_after_2 = {k: v.clone() for k, v in optimizer.state[lamda_adapters(model)[0].lora_B].items()}
    model2 = relaxed("lamda", rank=4, lamda_freeze_b_at=0.5)
    _, _, optimizer1 = train_steps(model2, steps=1, total_steps=8)
    state_after_1 = optimizer1.state[lamda_adapters(model2)[0].lora_B]
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(state_after_2[key][:, 0], state_after_1[key][:, 0], atol=0, rtol=0)
        assert not torch.equal(state_after_2[key][:, 1], state_after_1[key][:, 1])


def test_zeroed_gradients_alone_do_not_freeze_under_adamw():
    """The control that gives the test above its teeth: the official code's freeze lets columns drift."""
    model = relaxed("lamda", rank=4, lamda_freeze_b_at=0.5)
    history, _, _ = train_steps(model, steps=4, total_steps=8, freeze=False)
    assert not torch.equal(history[1][0][1][:, 0], history[4][0][1][:, 0])


def test_freeze_at_zero_keeps_b_frozen_from_the_start():
    model = relaxed("lamda", rank=4, lamda_freeze_b_at=0.0)
    history, _, _ = train_steps(model, steps=3, total_steps=8)
    assert all(torch.equal(history[0][i][1], history[-1][i][1]) for i in range(len(lamda_adapters(model))))


def test_freeze_shared_trains_only_s_and_b_and_leaves_a_frozen():
    for adapter in ("lamda", "lamda++"):
        model = relaxed(adapter, freeze_shared=True)
        trainable = {name.rpartition(".")[2] for name, p in model.named_parameters() if p.requires_grad}
        assert trainable == {"lora_S", "lora_B"}
    lora = relaxed("lora", freeze_shared=True)
    assert {name.rpartition(".")[2] for name, p in lora.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}


def with_spectrum(singular_values: torch.Tensor, seed: int) -> torch.Tensor:
    """A square matrix U diag(s) V^T with these singular values and random orthonormal U, V."""
    g = torch.Generator().manual_seed(seed)
    n = len(singular_values)
    u = torch.linalg.qr(torch.randn(n, n, generator=g)).Q
    v = torch.linalg.qr(torch.randn(n, n, generator=g)).Q
    return u @ torch.diag(singular_values) @ v.T


def test_flatter_spectra_get_more_rank_within_the_same_budget():
    n = 32
    residuals = {
        "flat": with_spectrum(torch.ones(n), 0),
        "linear": with_spectrum(torch.linspace(1.0, 0.01, n), 1),
        "steep": with_spectrum(0.5 ** torch.arange(n, dtype=torch.float32), 2),
        "zero": torch.zeros(n, n),
    }
    uniform = dict.fromkeys(residuals, 8)
    shapes = dict.fromkeys(residuals, (n, n))
    ranks = allocate_from_residuals(uniform, shapes, residuals.get, "lamda")
    assert ranks["flat"] > ranks["linear"] > ranks["steep"] >= 1
    assert ranks["zero"] == 8  # no spectrum: it keeps its uniform rank
    budget = 4 * adapter_params("lamda", 8, n, n)
    used = sum(adapter_params("lamda", r, n, n) for r in ranks.values())
    cheapest_next = min(
        adapter_params("lamda", ranks[k] + 1, n, n) - adapter_params("lamda", ranks[k], n, n)
        for k in ("flat", "linear", "steep")
    )
    assert budget - cheapest_next < used <= budget


def test_lamda_plus_meets_the_uniform_budget_to_the_parameter():
    plus, uniform = relaxed("lamda++", rank=4), relaxed("lamda", rank=4)
    allocation = relaxation(plus)["allocation"]
    assert allocation["budget"] == count_params(uniform).adapters
    assert allocation["used"] == count_params(plus).adapters <= allocation["budget"]
    growing = [m for m in lamda_adapters(plus) if m.rank < min(m.in_features, m.out_features)]
    cheapest_next = min(m.in_features + m.out_features + 2 * m.rank + 1 for m in growing)
    assert allocation["budget"] - allocation["used"] < cheapest_next
    assert any(isinstance(per_depth, list) for per_depth in relaxation(plus)["ranks"].values())  # depths differ
    assert relaxation(plus)["effective"] == relaxation(uniform)["effective"]  # lines up with LaMDA at rank 4


def test_lamda_plus_is_saved_loaded_and_counted_from_its_spec(tmp_path):
    model = relaxed("lamda++", rank=4).eval()
    allocation = recursion_spec_of(model).lora.allocation
    assert set(allocation) == set(family_for(model.config).linears)
    save_converted(model, tmp_path / "model")
    assert saved_spec(tmp_path / "model").lora.allocation == allocation
    loaded = load_converted(tmp_path / "model")
    assert relaxation(loaded)["ranks"] == relaxation(model)["ranks"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens()).logits, model(tokens()).logits, atol=0, rtol=0)
    assert count_params_from_config(model.config, saved_spec(tmp_path / "model")) == count_params(model)
    with pytest.raises(UserError, match="saved with it"):
        count_params_from_config(model.config, RecursionSpec(loops=2, lora=LoRASpec(rank=4, adapter="lamda++")))


def test_a_saved_allocation_that_does_not_fit_the_model_is_refused():
    spec = RecursionSpec(loops=2, lora=LoRASpec(rank=4, adapter="lamda++", allocation={"self_attn.q_proj": [4] * 4}))
    with pytest.raises(UserError, match="must list 4 ranks"):
        convert_to_recursive(tiny_model("llama", 4), spec, initialize=False)


def test_a_lamda_plus_run_records_and_saves_its_allocation_and_never_moves_a_frozen_b(tmp_path):
    overrides = [
        *TINY,
        "lora=lamda_plus",
        "lora.rank=4",
        "init=average",
        "lora.lamda_freeze_b_at=0",
        "budget.tokens=256",
        "budget.warmup_steps=1",
    ]
    run_train(*overrides, runs_root=tmp_path / "runs")
    record = single_record(tmp_path / "runs")
    relax, setting = record["relaxation"], record["setting"]
    assert setting["adapter"] == "lamda++" and setting["lora_rank"] == 4
    assert relax["allocation"]["used"] == record["params"]["adapters"] <= relax["allocation"]["budget"]
    model = load_converted(Path(record["run_dir"]) / "model")
    assert relaxation(model)["ranks"] == relax["ranks"]
    assert any(isinstance(ranks, list) for ranks in relax["ranks"].values())  # per depth where depths differ
    start = build_student(plan_run(compose_train(*overrides, run_dir=tmp_path / "start")))
    for trained, initial in zip(lamda_adapters(model), lamda_adapters(start), strict=True):
        assert_unmoved(trained.lora_A, initial.lora_A)
        assert_unmoved(trained.lora_B, initial.lora_B)  # t_i = 0: B frozen from the start
        assert (trained.lora_S - initial.lora_S).abs().max() > 1e-5  # S trained


def assert_unmoved(trained: torch.Tensor, initial: torch.Tensor) -> None:
    """Equal up to the SVD's rounding: the test rebuilds the start in a process with another LAPACK thread count;
    one step of lr 2e-4 moves an entry by ~1e-4."""
    torch.testing.assert_close(trained, initial, atol=1e-6, rtol=0)


@pytest.mark.integration
def test_two_process_ddp_and_fsdp_lamda_runs_match_one_process(tmp_path):
    """B freezes column by column inside the run (t_i = 4 of 8 steps): the graph must stay the same for DDP and FSDP."""
    lamda = [
        *TINY,
        "lora=lamda",
        "lora.rank=4",
        "init=average",
        "lora.lamda_freeze_b_at=0.5",
        "trainer.precision=32-true",
    ]
    run_train(*lamda, "budget.micro_batch_size=4", runs_root=tmp_path / "one")
    run_train(*lamda, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", runs_root=tmp_path / "ddp")
    run_train(*lamda, "trainer=fsdp_cpu", runs_root=tmp_path / "fsdp")
    one = single_record(tmp_path / "one")
    start = build_student(plan_run(compose_train(*lamda, run_dir=tmp_path / "start")))
    reference = load_converted(Path(one["run_dir"]) / "model")
    for name in ("ddp", "fsdp"):
        record = single_record(tmp_path / name)
        assert record["status"] == "complete" and record["cluster"]["world_size"] == 2, name
        curve, expected = losses_by_step(record), losses_by_step(one)
        assert sorted(curve) == sorted(expected) == list(range(1, 9))
        for step, loss in expected.items():
            assert curve[step] == pytest.approx(loss, rel=1e-5, abs=1e-5), (name, step)
        trained = load_converted(Path(record["run_dir"]) / "model")
        for got, want, initial in zip(*(lamda_adapters(m) for m in (trained, reference, start)), strict=True):
            assert_unmoved(got.lora_A, initial.lora_A)  # A never trains
            assert_unmoved(want.lora_A, initial.lora_A)
            torch.testing.assert_close(got.lora_B, want.lora_B, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(got.lora_S, want.lora_S, atol=1e-5, rtol=1e-4)
