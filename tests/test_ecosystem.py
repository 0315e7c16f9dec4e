"""rrt meets the tools around it: loggers get the whole experiment, run dirs name runs, checkpoints stay lean."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import torch

import rrt
from rrt.recursive import LoRASpec, RecursionSpec, convert_to_recursive
from rrt.recursive.io import round_to, saved_dtype
from rrt.run_names import MAX_NAME, run_name
from rrt.sweeps.disk import run_disk, sweep_disk_summary, tokenizer_bytes
from rrt.training.checkpoint import link_atomically
from tests.helpers import TINY, compose_config, compose_train, run_train, single_record, start_train, wait_for_steps
from tests.test_sweeps import compose_sweep, sweep_jobs
from tests.tiny import tiny_model
from tests.wandb_offline import read_offline_runs

WANDB = [*TINY[:2], "trainer=cpu", "logger=wandb_offline"]


def test_wandb_gets_the_setting_and_a_resumed_run_keeps_its_id(tmp_path):
    overrides = [*WANDB, "init=average", "lora.rank=4", "budget.tokens=2048", "budget.checkpoint_every_n_steps=100"]
    process = start_train(*overrides, runs_root=tmp_path)
    wait_for_steps(tmp_path, 2, process)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=300)
    assert single_record(tmp_path)["status"] == "interrupted"
    run_train(*overrides, runs_root=tmp_path)
    record = single_record(tmp_path)
    assert record["status"] == "complete"

    runs, problems = read_offline_runs(Path(record["run_dir"]))
    assert not problems and len(runs) == 2  # the interrupted and the resumed process
    assert {run["run_id"] for run in runs} == {f"wandb-{record['wandb_id']}"}
    setting = runs[-1]["config"]["setting"]
    assert (setting["init"], setting["lora_rank"], setting["loops"]) == ("average", 4, 2)
    assert runs[-1]["config"]["lora"]["rank"] == 4  # the resolved config too, not only the DataModule's keys


def test_csv_logger_gets_the_setting(tmp_path):
    run_train(*TINY[:2], "trainer=cpu", "logger=csv", "budget.tokens=512", runs_root=tmp_path)
    hparams = next(Path(single_record(tmp_path)["run_dir"]).rglob("hparams.yaml")).read_text()
    assert "setting:" in hparams and "init: stepwise" in hparams and "lora_rank: 0" in hparams


def test_a_complete_run_keeps_no_optimizer_state(tmp_path):
    run_train(*TINY, "budget.tokens=1024", "budget.checkpoint_every_n_steps=2", runs_root=tmp_path)
    checkpoints = Path(single_record(tmp_path)["run_dir"]) / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["last.ckpt"]
    assert not (checkpoints / "last.ckpt").is_symlink()  # the link became the one file left
    state = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert "optimizer_states" not in state and state["state_dict"] and state["global_step"] == 8


def test_last_ckpt_is_a_link_not_a_second_copy_and_the_model_can_be_bf16(tmp_path):
    overrides = [*TINY, "budget.tokens=1024", "budget.checkpoint_every_n_steps=3", "keep_optimizer_state=true"]
    run_train(*overrides, "save_dtype=bfloat16", runs_root=tmp_path)
    record = single_record(tmp_path)
    model_dir = Path(record["run_dir"]) / "model"
    weights = model_dir / "model.safetensors"
    assert record["saved_model"] == {"dir": "model", "dtype": "bfloat16", "bytes": weights.stat().st_size}
    assert json.loads((model_dir / "config.json").read_text())["dtype"] == "bfloat16"
    assert {p.dtype for p in rrt.from_pretrained(model_dir, dtype=None).parameters()} == {torch.bfloat16}
    assert {p.dtype for p in rrt.from_pretrained(model_dir).parameters()} == {torch.float32}  # CPU-friendly default
    checkpoints = Path(record["run_dir"]) / "checkpoints"
    last = checkpoints / "last.ckpt"
    assert last.is_symlink() and os.readlink(last) == "step6.ckpt"  # relative: the run dir can move
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step6.ckpt"]  # step3.ckpt pruned
    on_disk = sum(p.stat().st_size for p in checkpoints.iterdir() if not p.is_symlink())
    assert on_disk == (checkpoints / "step6.ckpt").stat().st_size  # one checkpoint's bytes, not two
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 6 and "optimizer_states" in state

    estimate = run_disk(compose_train(*overrides, "save_dtype=bfloat16", run_dir=tmp_path / "x"))
    assert 0.95 <= on_disk_bytes(model_dir) / estimate.model <= 1.05  # bf16: 2 B per parameter, + the tokenizer
    assert 0.95 <= on_disk / estimate.checkpoint <= 1.1  # fp32 weights + AdamW moments (+ counters, loop state)


def on_disk_bytes(run_dir: Path) -> int:
    """Bytes of the files a run dir keeps (a link counts nothing: it is not a copy)."""
    return sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file() and not p.is_symlink())


def test_a_sweep_prints_the_disk_it_needs_before_it_launches(tmp_path):
    result = run_train("-m", *TINY, "budget.tokens=512", "lora.rank=0,4", runs_root=tmp_path)
    output = result.stdout + result.stderr
    line = next(line for line in output.splitlines() if "disk: 2 runs to train keep" in line)
    assert output.index(line) < output.index("Launching") or "Launching" not in output
    assert "without optimizer state" in line and "last.ckpt is a link" in line
    assert f"free at {tmp_path / 'sweeps'}" in output
    value, unit = re.search(r"keep ~([\d.]+) (MB|GB)", line).groups()
    kept_estimate = float(value) * {"MB": 1e6, "GB": 1e9}[unit]
    kept = sum(on_disk_bytes(path.parent) for path in tmp_path.rglob("record.json"))
    assert 0.9 <= kept / kept_estimate <= 1.1, (kept, kept_estimate)  # model + last.ckpt without optimizer state


def test_the_disk_estimate_of_a_paper_preset_scales_with_its_runs():
    cpu = [
        compose_config("config", "experiment=g2_relaxed_cpu", *job)
        for job in sweep_jobs(compose_sweep("g2_relaxed_cpu"))
    ]
    runs = [run_disk(cfg) for cfg in cpu]
    assert len(runs) == 12 and len({r.params for r in runs}) == 4  # four ranks, three inits each
    tokenizer = tokenizer_bytes("gemma3_270m")
    assert tokenizer > 10**7  # gemma's 262k-token tokenizer.json
    assert all(r.model == 4 * r.params + tokenizer and r.kept == r.model + 4 * r.params for r in runs)
    assert all(r.checkpoint == 12 * r.params and r.peak == 2 * r.checkpoint + r.model for r in runs)
    summary = sweep_disk_summary(cpu, Path("/"))
    assert summary.startswith("disk: 12 runs to train keep ~") and "free at /" in summary


def test_a_bf16_save_halves_the_weights_and_loads_back_exactly_with_its_ties(tmp_path):
    model = convert_to_recursive(tiny_model("llama"), RecursionSpec(loops=2, init="average", lora=LoRASpec(rank=4)))
    rrt.save_pretrained(model, tmp_path / "fp32")
    rrt.save_pretrained(model, tmp_path / "bf16", dtype=torch.bfloat16)
    fp32, bf16 = ((tmp_path / name / "model.safetensors").stat().st_size for name in ("fp32", "bf16"))
    assert bf16 < 0.55 * fp32
    loaded = rrt.from_pretrained(tmp_path / "bf16", dtype=None)
    expected = {name: p.detach().to(torch.bfloat16) for name, p in model.named_parameters()}
    for name, param in loaded.named_parameters():
        assert param.dtype == torch.bfloat16 and torch.equal(param, expected[name]), name
    layers, shared = loaded.model.layers, len(loaded.model.layers) // 2  # B=2: depth d and d + K share weights
    assert layers[0].self_attn.q_proj.base.weight is layers[shared].self_attn.q_proj.base.weight  # still tied
    assert saved_dtype(tmp_path / "bf16") == torch.bfloat16 and saved_dtype(tmp_path / "fp32") == torch.float32
    assert model.model.layers[0].self_attn.q_proj.base.weight.dtype == torch.float32  # the saved model is unchanged
    round_to(model, torch.bfloat16)  # what a bf16 run evaluates: the saved values, in fp32
    upcast = rrt.from_pretrained(tmp_path / "bf16")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), upcast.parameters()))


def test_a_link_is_replaced_in_one_rename(tmp_path):
    (tmp_path / "step2.ckpt").write_bytes(b"2")
    (tmp_path / "step4.ckpt").write_bytes(b"4")
    link_atomically(tmp_path / "step2.ckpt", tmp_path / "last.ckpt")
    link_atomically(tmp_path / "step4.ckpt", tmp_path / "last.ckpt")
    assert (tmp_path / "last.ckpt").read_bytes() == b"4" and os.readlink(tmp_path / "last.ckpt") == "step4.ckpt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "step2.ckpt", "step4.ckpt"]  # no tmp left
    (tmp_path / "last.ckpt").unlink()
    (tmp_path / "last.ckpt").write_bytes(b"stopped")  # a stop on a signal writes a file of its own
    link_atomically(tmp_path / "step4.ckpt", tmp_path / "last.ckpt")
    assert (tmp_path / "last.ckpt").is_symlink()


def test_keys_that_do_not_change_the_run_do_not_change_its_dir():
    base = run_name(["model=tiny_llama", "lora.rank=4"])
    assert (
        run_name(
            [
                "logger=csv",
                "model=tiny_llama",
                "eval=paper7",
                "lora.rank=4",
                "resume=never",
                "hydra/launcher=slurm_cpu",
                "trainer.devices=2",
                "paths.runs_root=/x",
            ]
        )
        == base
    )
    assert run_name(["model=tiny_llama", "lora.rank=8"]) != base


def test_run_dir_names_are_single_short_components_and_never_a_parent():
    assert run_name([]) == "default"  # not runs/train/ itself, which holds every other run
    many = [f"budget.{key}={value}" for key, value in zip("abcdefghijklmnop", range(100000, 100016))]
    long = run_name(many)
    assert len(long) <= MAX_NAME and "/" not in long and long.startswith("budget.a-100000")
    assert run_name(many[:-1] + ["budget.p=1"]) != long  # the hash keeps long names apart
    path_valued = run_name(["model.name=runs/train/init-average", "early_exit=aggressive_kd"])
    assert "/" not in path_valued and "model.name-runs_train_init-average" in path_valued


def test_a_long_command_line_trains_in_a_readable_dir(tmp_path):
    budget = [
        "budget.tokens=512",
        "budget.seq_len=32",
        "budget.global_batch=4",
        "budget.micro_batch_size=2",
        "budget.warmup_steps=1",
        "budget.val_check_interval=4",
        "budget.val_batches=1",
        "budget.log_every_n_steps=1",
        "budget.checkpoint_every_n_steps=2",
        "seed=1",
        "loss.chunk_tokens=64",
        "optim.min_lr_ratio=0.2",
        "init=average",
    ]
    run_train(*TINY, *budget, runs_root=tmp_path)
    record = single_record(tmp_path)
    assert record["status"] == "complete" and len(Path(record["run_dir"]).name) <= MAX_NAME
    assert set(budget) <= set(record["overrides"])  # the full command line is in the record
