"""A user's mistake gets one line naming the key or file, exit code 2, and no compute, at every entry point.

The entry points run in-process (the real ``@hydra.main`` / argparse ``main`` with ``sys.argv`` set), which is the
same code path as the console scripts without a second interpreter start per case; ``test_console_scripts_*`` runs
a few of them as real subprocesses to pin the exit code there too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from rrt.cli import convert, evaluate, exit_head, serve
from rrt.cli import train as train_cli
from rrt.records import RunRecord
from rrt.recursive.io import save_converted
from tests.helpers import ROOT, TINY

ENTRY_POINTS = {
    "train": train_cli.main,
    "eval": evaluate.main,
    "convert": convert.main,
    "serve": serve.main,
    "exit_head": exit_head.main,
}


def call(entry: str, argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """Run an entry point as its console script would; (exit code, stderr)."""
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", [entry, *argv])
    with pytest.raises(SystemExit) as stop:
        ENTRY_POINTS[entry]()
    return stop.value.code, capsys.readouterr().err


def assert_one_line(code: int, stderr: str, names: str) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2, stderr[-2000:]
    assert len(errors) == 1 and names in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr


def nothing_built(root: Path) -> bool:
    return not list(root.rglob("record.json")) and not list(root.rglob("model.safetensors"))


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """Bad inputs on disk: data files, a run without a model, corrupt records and checkpoints."""
    made = {
        "binary": tmp_path / "binary.jsonl",
        "malformed": tmp_path / "malformed.jsonl",
        "no_field": tmp_path / "no_field.jsonl",
        "a_file": tmp_path / "a_file",
    }
    made["binary"].write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary")
    made["malformed"].write_text('{"text": "fine"}\n{"text": broken\n')
    made["no_field"].write_text('{"content": "a document"}\n')
    made["a_file"].write_text("not a directory")
    unfinished = tmp_path / "unfinished"
    RunRecord.create(unfinished, status="running")
    made["unfinished"] = unfinished
    for name, content in (("corrupt_record", "{not json"), ("list_record", "[1, 2]")):
        run = tmp_path / name
        run.mkdir()
        (run / "record.json").write_text(content)
        made[name] = run
    truncated = tmp_path / "truncated_ckpt"
    (truncated / "checkpoints").mkdir(parents=True)
    (truncated / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    made["truncated_ckpt"] = truncated
    return made


TRAIN_CASES = [
    (["distill=forward_kl", "distill.temperature=0"], "distill.temperature"),
    (["distill=forward_kl", "distill.temperature=-1"], "distill.temperature"),
    (["distill=forward_kl", "distill.weight=-1"], "distill.weight"),
    (["early_exit=aggressive", "early_exit.coef=-0.1"], "early_exit.coef"),
    (["budget.warmup_steps=-1"], "budget.warmup_steps"),
    (["lora.lamda_freeze_b_at=1.5"], "lora.lamda_freeze_b_at"),
    (["budget.micro_batch_size=0"], "budget.micro_batch_size"),
    (["budget.val_check_interval=0"], "budget.val_check_interval"),
    (["budget.checkpoint_every_n_steps=0"], "budget.checkpoint_every_n_steps"),
    (["budget.tokens=0"], "budget.tokens"),
    (["loss.chunk_tokens=0"], "loss.chunk_tokens"),
    (["lora.rank=abc"], "lora.rank"),
    (["lora.rank=2.5"], "lora.rank"),
    (["lora.ranks.q=-1"], "'q'"),
    (["seed=abc"], "seed"),
    (["optim.optimizer.lr=0"], "optim.optimizer.lr"),
    (["optim.min_lr_ratio=2"], "optim.min_lr_ratio"),
    (["data.skip_tokens=-5"], "data.skip_tokens"),
    (["eval=smoke", "eval.limit=0"], "eval.limit"),
    (["eval=smoke", "eval.exit_loops=last"], "eval.exit_loops"),
    (["eval=smoke", "eval.exit_loops=[3]"], "eval.exit_loops"),
    (["eval=smoke", "eval.subset=middle"], "eval.subset"),
    (["eval=paper7", "eval.tasks=[piqa,squad]"], "squad"),
    (["budget.seq_len=100000"], "budget.seq_len"),
    (["model=smollm2_135m", "model.tokenizer=gemma3_270m"], "model.tokenizer=gemma3_270m"),
    (["early_exit=aggressive", "recursion.loops=1"], "recursion.loops>=2"),
    (["recursion.loops=3"], "recursion.loops=3"),
    (["recursion.looping=spiral"], "looping"),
    (["init.norm_init=median"], "norm_init"),
    (["lora.rank=4", "lora.init=gaussian"], "lora.init"),
    (["lora.rank=4", "lora.adapter=dora"], "lora.adapter"),
    (["variant=full", "lora.rank=8"], "lora.rank=0"),
    (["variant=reduced", "init=stepwise"], "init=stepwise"),
    (["early_exit=aggressive", "variant=full"], "variant=recursive"),
    (["resume=maybe"], "resume"),
    (["model.source=hub"], "model.source"),
    (["trainer=gpu"], "CUDA"),
    (["data=jsonl"], "data.train_files"),
    (["data=jsonl", "data.train_files=[/nonexistent/shard.jsonl]"], "/nonexistent/shard.jsonl"),
    (["distill=forward_kl", "distill.teacher=/nonexistent/full-run"], "distill.teacher"),
    (["model.name=/nonexistent/typo-run"], "model.name=/nonexistent/typo-run"),
    # typed groups (rrt/conf/schema.py): Hydra refuses these while composing
    (["recursion.loops=two"], "recursion.loops"),
    (["lora.rnak=8"], "lora.rnak"),
    (["+lora.rnak=8"], "lora.rnak"),
    (["distill=forward_kl", "distill.loss=kl"], "distill.loss"),
    (["early_exit.self_kd=maybe"], "early_exit.self_kd"),
    (["budget.tokens=lots"], "budget.tokens"),
    (["variant.name=tiny"], "variant.name"),
    (["lora=nosuch"], "lora/nosuch"),
]


@pytest.mark.parametrize(("overrides", "names"), TRAIN_CASES)
def test_train_rejects_bad_config_before_compute(overrides, names, tmp_path, monkeypatch, capsys):
    code, stderr = call("train", [*TINY, *overrides, f"paths.runs_root={tmp_path}"], monkeypatch, capsys)
    assert_one_line(code, stderr, names)
    assert nothing_built(tmp_path)


@pytest.mark.parametrize(
    ("kind", "names"),
    [("binary", "binary.jsonl:1"), ("malformed", "malformed.jsonl:2"), ("no_field", "no_field.jsonl:1")],
)
def test_train_names_the_bad_data_file_and_line(kind, names, files, tmp_path, monkeypatch, capsys):
    overrides = [*TINY, "data=jsonl", f"data.train_files=[{files[kind]}]", f"paths.runs_root={tmp_path / 'runs'}"]
    code, stderr = call("train", overrides, monkeypatch, capsys)
    assert_one_line(code, stderr, names)
    assert nothing_built(tmp_path / "runs")


@pytest.mark.parametrize(
    ("kind", "names", "how"),
    [
        ("unfinished", "has not finished", "model.name"),
        ("a_file", "is a file", "paths.runs_root"),
        ("corrupt_record", "corrupt", "paths.run_dir"),
        ("list_record", "corrupt", "paths.run_dir"),
        ("truncated_ckpt", "cannot be read safely", "paths.run_dir"),
    ],
)
def test_train_names_the_bad_path_and_the_way_out(kind, names, how, files, tmp_path, monkeypatch, capsys):
    target = files[kind] / "x" if how == "paths.runs_root" else files[kind]
    code, stderr = call(
        "train",
        [*TINY, f"{how}={target}", f"paths.runs_root={tmp_path / 'runs'}"]
        if how != "paths.runs_root"
        else [*TINY, f"paths.runs_root={target}"],
        monkeypatch,
        capsys,
    )
    assert_one_line(code, stderr, names)
    assert not (files[kind] / "model").exists()


@pytest.fixture
def saved_models(tmp_path, model, tokenizer) -> dict[str, Path]:
    """A run that failed, and a saved model with NaN weights (the tiny converted model of tests/test_eval_lm.py)."""
    failed = tmp_path / "failed"
    save_converted(model, failed / "model", tokenizer=tokenizer)
    RunRecord.create(failed, status="failed", error="TrainingDiverged: non-finite training loss")
    broken = tmp_path / "nan_model"
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        saved = weight.clone()
        weight[0, 0] = float("nan")
        save_converted(model, broken, tokenizer=tokenizer)
        weight.copy_(saved)
    return {"failed": failed, "nan": broken}


EVAL_CASES = [
    ([], "nothing to evaluate"),
    (["run=/nonexistent/run"], "/nonexistent/run"),
    (["checkpoint=/nonexistent/model"], "/nonexistent/model"),
    (["model=tiny_llama"], "no pretrained weights"),
    (["model=gemma3_270m", "eval.limit=-3"], "eval.limit"),
    (["model=gemma3_270m", "eval.exit_loops=last"], "eval.exit_loops"),
    (["model=gemma3_270m", "eval.tasks=[squad]"], "squad"),
    (["model=gemma3_270m", "eval.subset=middle"], "eval.subset"),
    (["model=gemma3_270m", "device=cuda"], "device=cuda"),
    (["model=gemma3_270m", "output=/"], "output=/"),
]


@pytest.mark.parametrize(("overrides", "names"), EVAL_CASES)
def test_eval_rejects_bad_input_before_loading(overrides, names, monkeypatch, capsys):
    assert_one_line(*call("eval", overrides, monkeypatch, capsys), names)


@pytest.mark.parametrize(("kind", "names"), [("failed", "not complete"), ("nan", "not finite")])
def test_eval_refuses_a_failed_run_and_a_non_finite_model(kind, names, saved_models, monkeypatch, capsys):
    target = f"run={saved_models[kind]}" if kind == "failed" else f"checkpoint={saved_models[kind]}"
    assert_one_line(*call("eval", [target], monkeypatch, capsys), names)


SERVE_CASES = [
    (["serve.requests=0"], "serve.requests"),
    (["serve.max_batch=0"], "serve.max_batch"),
    (["serve.min_new_tokens=50", "serve.max_new_tokens=10"], "serve.min_new_tokens"),
    (["serve.head_batch=100"], "serve.head_batch"),
    (["serve.policy=psychic"], "serve.policy"),
    (["serve.batching=magic"], "serve.batching"),
    (["serve.threshold=2"], "serve.threshold"),
    (["serve.threads=abc"], "serve.threads"),
    (["device=cuda"], "device=cuda"),
    (["serve.output=/"], "serve.output"),
    (["serve.learned_threshold=1.5"], "serve.learned_threshold"),
]


@pytest.mark.parametrize(("overrides", "names"), SERVE_CASES)
def test_serve_rejects_bad_input_before_loading(overrides, names, monkeypatch, capsys):
    assert_one_line(*call("serve", ["model=gemma3_270m", *overrides], monkeypatch, capsys), names)


EXIT_HEAD_CASES = [
    (["exit_head.tokens=0"], "exit_head.tokens"),
    (["exit_head.tokens=abc"], "exit_head.tokens"),
    (["exit_head.calibration=1.5"], "exit_head.calibration"),
    (["+exit_head.widht=64"], "exit_head.widht"),
    ([], "run=<run dir>"),
    (["device=cuda"], "device=cuda"),
]


@pytest.mark.parametrize(("overrides", "names"), EXIT_HEAD_CASES)
def test_exit_head_rejects_bad_input_before_loading(overrides, names, monkeypatch, capsys):
    target = [] if names == "run=<run dir>" else ["checkpoint=/nonexistent"]
    assert_one_line(*call("exit_head", [*target, *overrides], monkeypatch, capsys), names)


CONVERT_CASES = [
    (["lora.rank=abc"], "lora.rank"),
    (["recursion.loops=5"], "recursion.loops=5"),
    (["model.source=hub"], "model.source"),
    (["init=stepwise", "recursion.looping=spiral"], "looping"),
    (["recursion.loops=two"], "recursion.loops"),
    (["+lora.rnak=8"], "lora.rnak"),
]


@pytest.mark.parametrize(("overrides", "names"), CONVERT_CASES)
def test_convert_rejects_bad_input_before_loading(overrides, names, tmp_path, monkeypatch, capsys):
    assert_one_line(*call("convert", [*overrides, f"out={tmp_path / 'out'}"], monkeypatch, capsys), names)
    assert not (tmp_path / "out").exists()


def test_report_and_status_name_a_missing_root(tmp_path):
    for module in ("analysis.report", "rrt.sweeps.status"):
        extra = ["--out", str(tmp_path / "report")] if module == "analysis.report" else []
        result = subprocess.run(
            [sys.executable, "-m", module, str(tmp_path / "nope"), *extra], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 2 and str(tmp_path / "nope") in result.stderr, (module, result.stderr)
        assert "Traceback" not in result.stderr


def test_console_scripts_exit_2_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *TINY, "seed=abc", f"paths.runs_root={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert_one_line(result.returncode, result.stderr, "seed")
    result = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), "run=/nonexistent/run"], cwd=ROOT, capture_output=True, text=True
    )
    assert_one_line(result.returncode, result.stderr, "/nonexistent/run")


def test_rrt_debug_shows_the_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *TINY, "seed=abc", f"paths.runs_root={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "RRT_DEBUG": "1"},
    )
    assert result.returncode != 0 and "Traceback" in result.stderr and "UserError" in result.stderr
    assert nothing_built(tmp_path)
