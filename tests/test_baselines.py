"""The paper's baselines: full-size uptrained, reduced-size from scratch (rrt-paper.md section 1.6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rrt.factory.models import reduced_config
from rrt.recursive import RecursionSpec, count_params_from_config
from rrt.recursive.counting import model_config
from tests.helpers import TINY, losses_by_step, run_train, single_record


@pytest.mark.parametrize(
    "name,loops,paper",
    [("gemma_2b", 2, 0.99), ("gemma_2b", 3, 0.66), ("tinyllama_1b", 2, 0.48), ("pythia_1b", 2, 0.40)],
)
def test_reduced_size_matches_the_recursive_n_emb(name, loops, paper):
    reduced = count_params_from_config(reduced_config(model_config(name), loops))
    recursive = count_params_from_config(name, RecursionSpec(loops=loops))
    assert reduced.non_embedding == recursive.non_embedding
    assert round(reduced.non_embedding / 1e9, 2) == paper
    assert reduced_config(model_config(name), loops).num_hidden_layers == model_config(name).num_hidden_layers // loops


def test_reduced_gemma3_keeps_a_valid_attention_pattern():
    config = reduced_config(model_config("gemma3_270m"), 2)
    assert config.num_hidden_layers == 9 and len(config.layer_types) == 9
    assert config.layer_types[5] == "full_attention"


def test_full_variant_then_a_student_distilled_from_its_checkpoint(tmp_path):
    run_train(*TINY, "variant=full", runs_root=tmp_path / "full")
    full = single_record(tmp_path / "full")
    assert full["status"] == "complete" and full["setting"]["variant"] == "full"
    assert full["params"]["non_embedding"] == full["params"]["original_non_embedding"]  # no conversion
    full_dir = Path(full["run_dir"])
    assert json.loads((full_dir / "model" / "recursion.json").read_text())["recursion"] is None

    run_train(*TINY, "distill=forward_kl", f"distill.teacher={full_dir}", runs_root=tmp_path / "student")
    student = single_record(tmp_path / "student")
    assert student["setting"]["distill"] == "forward_kl"
    kd = [m["kd"] for m in student["metrics"] if "kd" in m]
    assert len(kd) == 8 and all(k > 0 for k in kd)
    assert all(m["loss"] > m["ce"] for m in student["metrics"] if "loss" in m)  # loss = CE + 1.0 x KD


def test_reduced_variant_trains_l_over_b_layers_from_scratch(tmp_path):
    run_train(*TINY, "variant=reduced", runs_root=tmp_path)
    record = single_record(tmp_path)
    assert record["setting"]["variant"] == "reduced" and record["setting"]["init"] == "random"
    assert record["setting"]["pretrained"] is False
    config = json.loads((Path(record["run_dir"]) / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2  # tiny_llama: 4 layers, B=2
    assert len(losses_by_step(record)) == 8


def test_post_training_continues_a_converted_run_with_exit_losses(tmp_path):
    """J.1's recipe: early-exit losses after uptraining, starting from the uptrained run's model (no re-conversion)."""
    run_train(*TINY, runs_root=tmp_path / "uptrain")
    uptrained = Path(single_record(tmp_path / "uptrain")["run_dir"])
    run_train(*TINY, f"model.name={uptrained}", "early_exit=aggressive_kd", runs_root=tmp_path / "post")
    record = single_record(tmp_path / "post")
    assert record["setting"]["early_exit"] == "aggressive" and record["setting"]["early_exit_kd"] is True
    assert record["setting"]["early_exit_phase"] == "post" and record["setting"]["start_from"] == str(
        uptrained / "model"
    )
    rows = [m for m in record["metrics"] if "loss" in m]
    assert all("ce_exit1" in m and "self_kd_exit1" in m for m in rows)
    # loss = CE_2 + 0.1 * (CE_1 + KL_1): the exit terms are really in the optimised loss
    for m in rows:
        assert abs(m["loss"] - (m["ce"] + 0.1 * (m["ce_exit1"] + m["self_kd_exit1"]))) < 1e-4
    assert record["params"]["non_embedding"] == single_record(tmp_path / "uptrain")["params"]["non_embedding"]
