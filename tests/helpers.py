"""Helpers for tests that drive the real entry points (train.py, eval.py) and read run records.

The one definition of the checkout's paths (``ROOT``, ``CONF``) and of the tiny training settings (``TINY``);
fixtures shared by test modules are in ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import zstandard
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "rrt" / "conf"  # the package's configs (rrt.conf.CONF_DIR in a checkout)
TINY = ["model=tiny_llama", "budget=tiny", "logger=none", "trainer=cpu"]


def run_train(
    *overrides: str, runs_root: Path, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``python train.py <overrides>`` in a subprocess, with outputs under ``runs_root``."""
    command = [sys.executable, str(ROOT / "train.py"), *overrides, f"paths.runs_root={runs_root}"]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"train.py failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def single_record(runs_root: Path) -> dict:
    records = sorted(Path(runs_root).rglob("record.json"))
    assert len(records) == 1, records
    return json.loads(records[0].read_text())


def losses_by_step(record: dict) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in record["metrics"] if "loss" in m}


def compose_config(name: str, *overrides: str, hydra_config: bool = False):
    """A composed config of ``rrt/conf/<name>.yaml`` (config, eval, serve, convert), as its entry point sees it
    (the same ``pkg://rrt.conf`` source and search path); ``hydra_config``: with the ``hydra`` node."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="rrt.conf", version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=hydra_config)


def compose_train(*overrides: str, run_dir: Path):
    """The composed training config, with the run dir given (no Hydra run dir needed)."""
    return compose_config("config", *overrides, f"paths.run_dir={run_dir}")


def start_train(*overrides: str, runs_root: Path) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "train.py"), *overrides, f"paths.runs_root={runs_root}"]
    return subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )


def wait_for_steps(runs_root: Path, steps: int, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while process.poll() is None and time.time() < deadline:
        records = list(runs_root.rglob("record.json"))
        if records and len(losses_by_step(single_record(runs_root))) >= steps:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach step {steps} (exit code {process.poll()})")


# ---------------------------------------------------------------- text data (the word-level tokenizer in conftest)

BOS, EOS = 1, 2
WORDS = [f"w{i}" for i in range(200)]


def doc(number: int, length: int) -> str:
    """Document ``number`` (< 150): its first word identifies it, the rest are filler words 150..199."""
    return " ".join([WORDS[number]] + [WORDS[150 + (number + k) % 50] for k in range(1, length)])


def write_jsonl(path: Path, texts: list[str], field: str = "text", zstd: bool = False) -> Path:
    lines = "".join(
        json.dumps({field: text, "meta": {"redpajama_set_name": "RedPajamaBook"}}) + "\n" for text in texts
    ).encode()
    path.write_bytes(zstandard.ZstdCompressor().compress(lines) if zstd else lines)
    return path
