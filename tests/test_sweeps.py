"""Sweep presets, launcher profiles and the status table (no SLURM needed; tests/test_slurm.py runs them for real)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from rrt.records import RunRecord
from rrt.sweeps.status import sweep_status
from tests.helpers import CONF, ROOT, compose_config

# Runs per sweep = the rows of the paper table that the sweep trains (rrt-paper.md section 1.8; Gemma rows).
PAPER_ROWS = {
    "table2_baselines": 3,  # full-size 15B (Table 2), reduced-size 0.99B and Stepwise B=2 (F.1)
    "f1_init": 8,  # F.1: Step/Avg/Lower/Rand x B=2,3
    "g2_relaxed": 12,  # G.2: Step/Avg/Lower x rank 64/128/256/512, SVD
    "g2_relaxed_zero": 3,  # G.2: Step/Avg/Lower x rank 512, zero init
    "g2_adapters": 24,  # not a paper table: LoRA/LaMDA/LaMDA++ x rank 64..512 x paper/PEFT mode, Average
    "g1_ranks": 10,  # G.1: the 10 per-component rank tuples
    "i1_kd": 4,  # I.1: FKL/RKL/JSD/TVD, Stepwise B=2
    "i1_kd_relaxed": 4,  # I.1: FKL/RKL/JSD/TVD, Average r256
    "j1_early_exit": 4,  # Table 3: Weighted / Agg(0.1), with and without KD
    "j1_coef": 3,  # J.1: Agg(0.3), Agg(0.05), Agg(0.01)
    "j1_new": 1,  # J.1: Agg(0.1) on new data
}
PRESETS = sorted(PAPER_ROWS) + sorted(f"{name}_cpu" for name in PAPER_ROWS)


def compose_sweep(name: str, *overrides: str):
    return compose_config("config", f"experiment={name}", *overrides, hydra_config=True)


def sweep_jobs(cfg) -> list[list[str]]:
    """The job overrides Hydra's basic sweeper makes from hydra.sweeper.params (as `-m` would)."""
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
    return [job for batch in batches for job in batch]


def test_every_preset_is_tested():
    files = {path.stem for path in (CONF / "experiment").glob("*.yaml")}
    assert files == set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_every_job_with_the_paper_row_count(name: str):
    cfg = compose_sweep(name)
    jobs = sweep_jobs(cfg)
    assert len(jobs) == PAPER_ROWS[name.removesuffix("_cpu")]
    assert len({tuple(job) for job in jobs}) == len(jobs)
    assert cfg.hydra.sweep.dir == f"{cfg.paths.runs_root}/sweeps/{name}"
    for job in jobs:  # every cell composes and resolves
        OmegaConf.to_container(compose_sweep(name, *job), resolve=False)


def test_cpu_variant_keeps_the_grid_and_shrinks_the_scale():
    paper, cpu = compose_sweep("f1_init"), compose_sweep("f1_init_cpu")
    assert (
        sweep_jobs(paper)
        == sweep_jobs(cpu)
        == [
            [f"init={init}", f"recursion.loops={loops}"]
            for init in ("stepwise", "average", "lower", "random")
            for loops in (2, 3)
        ]
    )
    assert (paper.model.name, paper.budget.tokens, paper.trainer.strategy) == ("gemma_2b", 15_000_000_000, "ddp")
    assert (cpu.model.name, cpu.budget.tokens, cpu.trainer.accelerator) == ("gemma3_270m", 24576, "cpu")


def test_g1_sweeps_the_tables_rank_tuples():
    cfg = compose_sweep("g1_ranks", "lora.ranks={q:128,kv:64,o:128,ffn:128}")
    assert dict(cfg.lora.ranks) == {"q": 128, "kv": 64, "o": 128, "ffn": 128}
    assert cfg.init.name == "average" and cfg.lora.init == "svd"


def test_launcher_shape_follows_the_trainer():
    cfg = compose_sweep("f1_init", "hydra/launcher=slurm_multinode", "trainer.devices=4", "trainer.num_nodes=2")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.rrt_launcher.launcher.RRTSlurmLauncher"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    cpu = compose_sweep(
        "f1_init_cpu", "hydra/launcher=slurm_cpu", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"
    )
    assert (cpu.hydra.launcher.tasks_per_node, cpu.hydra.launcher.gpus_per_node, cpu.hydra.launcher.cpus_per_task) == (
        2,
        None,
        1,
    )


def test_launcher_reads_partition_account_qos_from_the_environment(monkeypatch):
    monkeypatch.setenv("RRT_SLURM_PARTITION", "gpu-long")
    monkeypatch.setenv("RRT_SLURM_ACCOUNT", "lab")
    cfg = compose_sweep("f1_init", "hydra/launcher=slurm_gpu", "hydra.launcher.qos=high")
    assert (cfg.hydra.launcher.partition, cfg.hydra.launcher.account, cfg.hydra.launcher.qos) == (
        "gpu-long",
        "lab",
        "high",
    )


def run_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_unknown_launcher_profile_lists_the_profiles(tmp_path: Path):
    result = run_train("-m", "hydra/launcher=slurm_nope", f"paths.runs_root={tmp_path}", cwd=ROOT)
    assert result.returncode != 0
    assert "Could not find 'hydra/launcher/slurm_nope'" in result.stderr
    for profile in ("slurm_cpu", "slurm_gpu", "slurm_multinode"):
        assert profile in result.stderr


def test_indivisible_global_batch_fails_before_anything_is_submitted(tmp_path: Path):
    """3 devices x micro batch 2 do not divide global batch 4: the launcher's preflight stops the sweep."""
    result = run_train(
        "-m",
        "experiment=f1_init_cpu",
        "hydra/launcher=slurm_cpu",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=3",
        "trainer.precision=32-true",
        f"paths.runs_root={tmp_path}",
        cwd=ROOT,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "would fail, nothing was submitted" in output
    assert "budget.global_batch=4 is not divisible by micro_batch_size x world size = 2 x 3" in output
    assert not (tmp_path / "sweeps" / "f1_init_cpu" / ".submitit").exists()


def test_status_lists_state_step_tokens_loss_and_eval_avg(tmp_path: Path):
    done = RunRecord.create(tmp_path / "init=stepwise", status="complete", budget={"steps": 2})
    done.append("metrics", [{"step": 1, "tokens": 128, "loss": 3.5}, {"step": 2, "tokens": 256, "loss": 3.25}])
    done.append(
        "evals",
        [
            {"task": "piqa", "value": 0.6, "exit_loop": 2},
            {"task": "arc_easy", "value": 0.5, "exit_loop": 2},
            {"task": "piqa", "value": 0.1, "exit_loop": 1},
        ],
    )
    running = RunRecord.create(tmp_path / "init=average", budget={"steps": 2}, cluster={"slurm_job_id": "7"})
    running.append("metrics", {"step": 1, "tokens": 128, "loss": 4.0})
    (tmp_path / "init=lower" / ".hydra").mkdir(parents=True)

    table = sweep_status(tmp_path).set_index("run")
    assert table.loc["init=stepwise", ["state", "step", "tokens", "loss"]].tolist() == ["complete", "2/2", 256, 3.25]
    assert table.loc["init=stepwise", "eval_avg"] == pytest.approx(55.0)
    assert table.loc["init=average", ["state", "step", "slurm_job"]].tolist() == ["running", "1/2", "7"]
    assert table.loc["init=lower", "state"] == "queued"

    cli = subprocess.run(
        [sys.executable, "-m", "rrt.sweeps.status", str(tmp_path)], capture_output=True, text=True, cwd=ROOT
    )
    assert cli.returncode == 0
    assert cli.stdout.splitlines()[-1] == "1 complete, 1 queued, 1 running"
    assert ["init=stepwise", "complete", "2/2", "256", "3.25", "55", "-"] in [
        line.split() for line in cli.stdout.splitlines()
    ]


@pytest.mark.parametrize("name", ["j1_early_exit", "j1_coef_cpu", "j1_new_cpu"])
def test_early_exit_presets_post_train_the_uptrained_run_and_report_every_loop(name: str):
    cfg = compose_sweep(name)
    table2 = "table2_baselines_cpu" if name.endswith("_cpu") else "table2_baselines"
    assert cfg.model.name == f"{cfg.paths.runs_root}/sweeps/{table2}/experiment-{table2}+variant-recursive"
    assert list(cfg.eval.exit_loops) == [1, 2]
    assert cfg.data.skip_tokens == (cfg.budget.tokens if name.startswith("j1_new") else 0)


@pytest.mark.parametrize("name", ["i1_kd", "i1_kd_relaxed_cpu"])
def test_kd_presets_name_the_uptrained_full_size_teacher(name: str):
    cfg = compose_sweep(name)
    table2 = "table2_baselines_cpu" if name.endswith("_cpu") else "table2_baselines"
    assert cfg.distill.teacher == f"{cfg.paths.runs_root}/sweeps/{table2}/experiment-{table2}+variant-full"
