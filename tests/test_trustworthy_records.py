"""A run record says what ran: effective values, the loaded model's setting, the real teacher, failures as failures.

Each test drives the real ``train.py`` on a tiny model, so the bug is tested where it lives (records written
by a run, models saved and reloaded), not on objects built in memory.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest

from rrt.training.setting import config_differences, data_novelty
from tests.helpers import TINY, compose_train, run_train, single_record


@pytest.fixture(scope="module")
def uptrained(tmp_path_factory) -> Path:
    """A finished Average-init, r=4 relaxed run (its dir)."""
    root = tmp_path_factory.mktemp("uptrain")
    run_train(*TINY, "init=average", "lora.rank=4", runs_root=root)
    return Path(single_record(root)["run_dir"])


def test_post_training_is_labelled_with_the_loaded_model(uptrained, tmp_path):
    run_train(*TINY, f"model.name={uptrained}", "early_exit=aggressive", runs_root=tmp_path)
    setting = single_record(tmp_path)["setting"]
    assert (setting["init"], setting["lora_rank"], setting["rank_ffn"], setting["loops"]) == ("average", 4, 4, 2)
    assert setting["early_exit_phase"] == "post" and setting["early_exit_data"] == "overlap"
    assert setting["pretrained"] is False  # tiny_llama is built from its config; the flag travels with the model
    assert setting["model"] == "tiny_llama"  # the start run's model, not its path (analysis groups by model)
    assert setting["start_from"] == str(uptrained / "model")


def test_post_training_on_new_data_skips_what_the_start_run_consumed(uptrained, tmp_path):
    consumed = json.loads((uptrained / "record.json").read_text())["setting"]["token_budget"]
    run_train(
        *TINY, f"model.name={uptrained}", "early_exit=aggressive", f"data.skip_tokens={consumed}", runs_root=tmp_path
    )
    setting = single_record(tmp_path)["setting"]
    assert setting["early_exit_data"] == "new" and setting["data_skip_tokens"] == consumed


def test_an_override_that_contradicts_the_loaded_model_is_refused(uptrained, tmp_path):
    result = run_train(
        *TINY, f"model.name={uptrained}", "lora.rank=8", "early_exit=aggressive", runs_root=tmp_path, check=False
    )
    assert result.returncode == 2
    assert "lora.rank=8 contradicts it" in result.stderr and "lora.rank=4" in result.stderr
    assert not list(tmp_path.rglob("record.json"))


def test_record_keeps_effective_ranks_and_warns_when_the_relaxed_model_is_not_smaller(tmp_path):
    run_train(*TINY, "lora.rank=100000", runs_root=tmp_path)
    record = single_record(tmp_path)
    # tiny_llama: hidden 64, K/V projections 32 wide (2 KV heads x 16): ranks capped at min(d_in, d_out)
    assert record["setting"]["lora_rank"] == 64 and record["setting"]["rank_kv"] == 32
    assert record["relaxation"]["requested"]["q"] == 100000
    assert record["relaxation"]["ranks"]["self_attn.k_proj"] == 32
    assert record["params"]["non_embedding"] > record["params"]["original_non_embedding"]
    assert any("not smaller than the original" in w for w in record["warnings"])


def test_kd_records_its_teacher(uptrained, tmp_path):
    run_train(*TINY, "distill=forward_kl", f"distill.teacher={uptrained}", runs_root=tmp_path / "saved")
    setting = single_record(tmp_path / "saved")["setting"]
    assert setting["teacher"] == str(uptrained / "model")
    assert (
        setting["teacher_sha256"]
        == hashlib.sha256((uptrained / "model" / "model.safetensors").read_bytes()).hexdigest()
    )

    bare = run_train(*TINY, "distill=forward_kl", runs_root=tmp_path / "bare")
    record = single_record(tmp_path / "bare")
    assert record["setting"]["teacher"] == "original:tiny_llama" and record["setting"]["teacher_sha256"] is None
    assert any("not the paper's teacher" in w for w in record["warnings"]) and "not the paper's teacher" in bare.stdout


def test_a_teacher_that_is_the_students_own_start_is_refused(uptrained, tmp_path):
    result = run_train(
        *TINY,
        f"model.name={uptrained}",
        "distill=forward_kl",
        f"distill.teacher={uptrained}",
        runs_root=tmp_path,
        check=False,
    )
    assert result.returncode == 2 and "own starting model" in result.stderr


def test_a_diverged_run_is_failed_with_its_step_and_saves_no_model(tmp_path):
    result = run_train(
        *TINY, "optim.optimizer.lr=1e30", "optim.gradient_clip_val=null", runs_root=tmp_path, check=False
    )
    record = single_record(tmp_path)
    assert result.returncode == 1 and "non-finite training loss" in result.stderr
    assert record["status"] == "failed" and "at step" in record["error"]
    assert not (Path(record["run_dir"]) / "model").exists()


def test_a_changed_configuration_does_not_resume_or_claim_complete(uptrained):
    result = run_train(
        *TINY,
        "init=average",
        "lora.rank=4",
        "seed=7",
        f"paths.run_dir={uptrained}",
        runs_root=uptrained.parent,
        check=False,
    )
    assert result.returncode == 2 and "another configuration" in result.stderr and "seed: 0 -> 7" in result.stderr


def test_resume_never_starts_a_clean_record(tmp_path):
    run_train(*TINY, "budget.tokens=512", runs_root=tmp_path)
    path = Path(single_record(tmp_path)["run_dir"]) / "record.json"
    data = json.loads(path.read_text())
    data["evals"] = [{"task": "piqa", "metric": "acc_norm", "value": 0.9}]
    path.write_text(json.dumps(data))
    run_train(*TINY, "budget.tokens=512", "resume=never", f"paths.run_dir={path.parent}", runs_root=tmp_path)
    fresh = json.loads(path.read_text())
    assert fresh["status"] == "complete" and fresh["evals"] == [] and fresh["created"] >= data["created"]


class _Planted:
    """Unpickling this writes a marker file: a checkpoint that runs code when loaded with pickle."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "executed"))


def test_a_planted_checkpoint_is_never_executed(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "marker"
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(pickle.dumps({"global_step": _Planted(str(marker))}))
    result = run_train(*TINY, f"paths.run_dir={run_dir}", runs_root=tmp_path, check=False)
    assert result.returncode == 2 and "cannot be read safely" in result.stderr
    assert not marker.exists()


def test_config_differences_ignore_keys_that_do_not_change_the_run(tmp_path):
    from omegaconf import OmegaConf

    base = OmegaConf.to_container(compose_train(*TINY, run_dir=tmp_path), resolve=True)
    cosmetic = OmegaConf.to_container(
        compose_train(*TINY, "logger=csv", "eval=ppl", run_dir=tmp_path / "x"), resolve=True
    )
    changed = OmegaConf.to_container(compose_train(*TINY, "lora.rank=8", run_dir=tmp_path), resolve=True)
    assert config_differences(base, cosmetic) == []
    assert config_differences(base, changed) == ["lora.rank: 0 -> 8"]


def test_data_novelty_needs_the_same_order_and_the_consumed_tokens_skipped(tmp_path):
    cfg = compose_train(*TINY, "data.skip_tokens=1024", run_dir=tmp_path)
    start = {
        "config": {"data": {"source": "local_corpus", "train_files": None, "seed": 0, "seq_len": 32}},
        "setting": {"token_budget": 1024},
    }
    assert data_novelty(cfg, start) == "new"
    assert data_novelty(cfg, {**start, "setting": {"token_budget": 2048}}) == "overlap"
    assert data_novelty(cfg, {**start, "config": {"data": {**start["config"]["data"], "seed": 1}}}) == "overlap"
    assert data_novelty(cfg, {**start, "config": {"data": {"source": "jsonl", "train_files": ["a.jsonl"]}}}) == "new"
    assert data_novelty(cfg, None) is None


def test_reduced_variant_keeps_no_weight_of_a_reloaded_checkpoint(tmp_path):
    """The reduced-size baseline is trained from scratch even when model.name is a pretrained checkpoint dir."""
    import torch

    from rrt.factory.plan import plan_run
    from rrt.factory.student import build_student
    from tests.tiny import tiny_model

    tiny_model("llama", 4, seed=3).save_pretrained(tmp_path / "hf")
    checkpoint = tiny_model("llama", 4, seed=3).state_dict()
    cfg = compose_train(
        *TINY, f"model.name={tmp_path / 'hf'}", "model.source=pretrained", "variant=reduced", run_dir=tmp_path / "run"
    )
    student = build_student(plan_run(cfg))
    assert student.config.num_hidden_layers == 2 and student.config.rrt_pretrained is False
    assert not torch.equal(student.get_input_embeddings().weight, checkpoint["model.embed_tokens.weight"])
    for name, value in student.state_dict().items():
        if name.startswith("model.layers."):
            assert not any(
                torch.equal(value, checkpoint[k]) for k in checkpoint if k.endswith(name.split(".", 3)[3])
            ), name
