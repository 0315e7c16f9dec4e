"""Training end to end through the real entry point: signature command, resume after kill -9, DDP, errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rrt.recursive import LoRASpec, RecursionSpec, count_params_from_config
from rrt.training.budget import Budget
from rrt.training.run import preflight
from tests.helpers import ROOT, TINY, compose_train, losses_by_step, run_train, single_record
from tests.wandb_offline import read_offline_runs


@pytest.mark.integration
def test_signature_command_runs_end_to_end_on_gemma3_270m(tmp_path):
    short = [
        "budget=tiny",
        "budget.tokens=256",
        "budget.warmup_steps=1",
        "budget.val_check_interval=2",
        "budget.val_batches=1",
    ]
    run_train("init=stepwise", "lora.rank=512", *short, "logger=wandb_offline", runs_root=tmp_path)
    record = single_record(tmp_path)
    run_dir = Path(record["run_dir"])
    assert record["status"] == "complete"
    assert record["setting"]["init"] == "stepwise" and record["setting"]["lora_rank"] == 512
    assert record["config"]["model"]["name"] == "gemma3_270m"
    assert record["budget"]["steps"] == 2 and len(losses_by_step(record)) == 2
    strict = count_params_from_config("gemma3_270m", RecursionSpec(loops=2)).non_embedding
    assert record["params"]["non_embedding"] - record["params"]["adapters"] == strict
    assert (
        record["params"]["adapters"]
        == count_params_from_config("gemma3_270m", RecursionSpec(loops=2, lora=LoRASpec(rank=512))).adapters
    )
    assert (run_dir / "model" / "recursion.json").exists() and (run_dir / "checkpoints" / "last.ckpt").exists()
    # wandb ran offline for real and its run file holds the logged metrics (read back from the .wandb log)
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    (wandb_run,), problems = read_offline_runs(run_dir)
    assert not problems and wandb_run["status"] == "complete"
    logged = [row for row in wandb_run["metrics"] if "train/loss" in row]
    assert len(logged) == 2 and all("train/tokens" in row and "train/lr" in row for row in logged)


def test_resume_after_kill9_continues_the_same_loss_curve(tmp_path):
    overrides = [*TINY, "budget.tokens=4096", "budget.checkpoint_every_n_steps=2"]
    run_train(*overrides, runs_root=tmp_path / "straight")
    straight = losses_by_step(single_record(tmp_path / "straight"))
    assert len(straight) == 32

    interrupted_root = tmp_path / "interrupted"
    command = [sys.executable, str(ROOT / "train.py"), *overrides, f"paths.runs_root={interrupted_root}"]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    deadline = time.time() + 600
    while (
        process.poll() is None
        and time.time() < deadline
        and not (
            list(interrupted_root.rglob("checkpoints/last.ckpt"))
            and len(losses_by_step(single_record(interrupted_root))) >= 4
        )
    ):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = single_record(interrupted_root)
    assert killed["status"] == "running" and len(losses_by_step(killed)) < 32  # it really died mid-run

    run_train(*overrides, runs_root=interrupted_root)  # resume=auto picks up checkpoints/last.ckpt
    resumed = single_record(interrupted_root)
    assert resumed["status"] == "complete"
    got = losses_by_step(resumed)
    assert sorted(got) == sorted(straight)
    assert max(abs(got[s] - straight[s]) for s in straight) <= 1e-6


def test_rerunning_a_complete_run_does_nothing(tmp_path):
    run_train(*TINY, runs_root=tmp_path)
    before = single_record(tmp_path)
    result = run_train(*TINY, runs_root=tmp_path)
    assert "already complete" in result.stdout + result.stderr
    assert single_record(tmp_path)["metrics"] == before["metrics"]


@pytest.mark.integration
def test_cpu_ddp_two_processes_trains_the_same_token_budget(tmp_path):
    run_train(
        *TINY,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        runs_root=tmp_path,
    )
    record = single_record(tmp_path)
    assert record["status"] == "complete"
    assert record["cluster"]["world_size"] == 2
    single = Budget(tokens=1024, seq_len=32, global_batch=4, micro_batch_size=2, world_size=1, warmup_steps=2)
    assert record["budget"]["tokens_trained"] == single.steps * single.tokens_per_step
    assert record["budget"]["steps"] == single.steps and record["budget"]["accumulate"] == single.accumulate // 2


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["lora.rank=-1"], "ranks must be >= 0"),
        (["budget.tokens=10"], "smaller than one optimizer step"),
        (["recursion.loops=3"], "valid values: [1, 2, 4]"),
        (["budget.global_batch=6", "budget.micro_batch_size=4"], "not divisible by micro_batch_size"),
        (["variant=reduced", "init=stepwise"], "selects init=random itself: drop init=stepwise"),
        (["variant=reduced", "lora.rank=4"], "set lora.rank=0"),
        (["variant=full", "lora.rank=8"], "set lora.rank=0"),
        (["early_exit=aggressive", "variant=full"], "needs a looped model"),
        (
            ["eval=ppl", "eval.perplexity.context_len=256", "eval.perplexity.stride=256"],
            "stride=256 must be in 1..context_len-1=255",
        ),
        (["eval=paper7", "eval.tasks=[piqa,squad]"], "squad"),
    ],
)
def test_bad_config_fails_before_compute(tmp_path, overrides, message):
    cfg = compose_train(*TINY, *overrides, run_dir=tmp_path / "run")
    with pytest.raises(ValueError) as error:
        preflight(cfg)
    assert message in str(error.value)


def test_unwritable_output_dir_is_reported(tmp_path):
    cfg = compose_train(*TINY, run_dir=Path("/proc/rrt-cannot-write"))
    with pytest.raises(PermissionError, match="not writable"):
        preflight(cfg)


def test_cli_prints_one_clear_error_and_exits_2(tmp_path):
    result = run_train(*TINY, "lora.rank=-1", runs_root=tmp_path, check=False)
    assert result.returncode == 2
    assert "error: lora rank for 'q' is -1" in result.stderr and "Traceback" not in result.stderr


def test_unknown_group_option_lists_the_choices(tmp_path):
    result = run_train("init=middle", runs_root=tmp_path, check=False)
    assert result.returncode != 0
    assert "Could not find 'init/middle'" in result.stderr
    for option in ("average", "lower", "random", "stepwise", "upper"):
        assert option in result.stderr


def test_teacher_with_another_vocabulary_is_rejected(tmp_path):
    from transformers import AutoModelForCausalLM

    from rrt.factory.plan import plan_run
    from rrt.factory.student import build_student, build_teacher
    from rrt.recursive.counting import model_config
    from rrt.recursive.io import save_converted

    config = model_config("tiny_llama")
    config.vocab_size = 1000
    save_converted(AutoModelForCausalLM.from_config(config), tmp_path / "teacher")
    cfg = compose_train(
        *TINY, "distill=forward_kl", f"distill.teacher={tmp_path / 'teacher'}", run_dir=tmp_path / "run"
    )
    plan = plan_run(cfg)
    with pytest.raises(ValueError, match="teacher vocabulary"):
        build_teacher(plan, build_student(plan))
