"""rrt meets the tools around it: loggers get the whole experiment, run dirs name runs, checkpoints stay lean."""

from __future__ import annotations

import signal
from pathlib import Path

import torch

from analysis.wandb_offline import read_offline_runs
from rrt.run_names import MAX_NAME, run_name
from tests.helpers import TINY, run_train, single_record, start_train, wait_for_steps

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
    state = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert "optimizer_states" not in state and state["state_dict"] and state["global_step"] == 8


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
