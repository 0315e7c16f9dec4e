"""No network in the default paths: training, evaluation and the report run with every outside connection refused.

Each command runs in a subprocess whose ``sitecustomize`` installs an audit hook: a DNS look-up or a connect to
anything but this machine is written to a log and refused. Refusing alone is not enough, since ``datasets``
swallows the error of its download-counter request; the log is what the test reads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

HOOK = """
import ipaddress, os, socket, sys

LOG = os.environ["RRT_NETWORK_LOG"]


def _local(host):
    if host in (None, "", "localhost", socket.gethostname()):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse_the_network(event, args):
    if event == "socket.connect":
        sock, address = args
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or _local(address[0]):
            return
        target = address
    elif event == "socket.getaddrinfo":
        if _local(args[0]):
            return
        target = args[:2]
    else:
        return
    with open(LOG, "a") as log:
        log.write(f"{event} {target!r} from {sys.argv}\\n")
    raise OSError(f"network refused by tests/test_offline.py: {event} {target!r}")


sys.addaudithook(_refuse_the_network)
"""
# What rrt sets on import; stripped from the subprocesses' environment (this pytest process imported rrt already),
# so each command has to set them itself.
RRT_SETS = (
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY",
    "HF_UPDATE_DOWNLOAD_COUNTS",
)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the variables rrt sets, plus ``extra``."""
    return {**{k: v for k, v in os.environ.items() if k not in RRT_SETS}, **extra}


@pytest.fixture
def guarded_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a subprocess that logs (to RRT_NETWORK_LOG) and refuses any outside connection."""
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    path = os.pathsep.join([str(hook_dir), os.environ.get("PYTHONPATH", "")])
    return clean_env(PYTHONPATH=path, RRT_NETWORK_LOG=str(tmp_path / "network.log"), OMP_NUM_THREADS="1")


def run_guarded(args: list[str], env: dict[str, str]) -> str:
    """Run ``python <args>`` under the hook; its combined output, after asserting it succeeded."""
    result = subprocess.run(
        [sys.executable, *args], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def network_attempts(env: dict[str, str]) -> list[str]:
    log = Path(env["RRT_NETWORK_LOG"])
    return log.read_text().splitlines() if log.exists() else []


def test_the_hook_sees_an_outside_connection(guarded_env):
    """The guard itself works: a plain look-up of a remote host is logged (else the test below proves nothing)."""
    result = subprocess.run(
        [sys.executable, "-c", "import socket; socket.getaddrinfo('huggingface.co', 443)"],
        check=False,
        env=guarded_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "network refused" in result.stderr
    assert network_attempts(guarded_env) == ["socket.getaddrinfo ('huggingface.co', 443) from ['-c']"]


def test_train_eval_and_report_make_no_network_connection(guarded_env, tmp_path):
    """The default logger (wandb offline) trains a tiny model; lm-eval scores it; the report reads the record."""
    runs = tmp_path / "runs"
    run_guarded(
        [
            "train.py",
            "model=tiny_llama",
            "budget=tiny",
            "budget.tokens=256",
            "budget.warmup_steps=1",
            "trainer=cpu",
            f"paths.runs_root={runs}",
        ],
        guarded_env,
    )
    (run_dir,) = [path.parent for path in runs.rglob("record.json")]
    out = run_guarded(
        [
            "eval.py",
            f"run={run_dir}",
            "eval=smoke",
            "eval.tasks=[winogrande]",
            "eval.limit=2",
            "eval.perplexity.datasets=[]",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ],
        guarded_env,
    )
    assert "winogrande" in out
    run_guarded(["-m", "analysis.report", str(runs), "--out", str(tmp_path / "report")], guarded_env)
    assert (tmp_path / "report" / "report.md").exists()
    assert network_attempts(guarded_env) == []


@pytest.mark.parametrize("hub_offline,expected", [(None, "True True"), ("0", "False False")])
def test_offline_is_a_default_the_user_can_turn_off(hub_offline, expected):
    """Importing rrt makes datasets and the hub offline, unless the user exported HF_HUB_OFFLINE=0."""
    env = clean_env() if hub_offline is None else clean_env(HF_HUB_OFFLINE=hub_offline)
    code = (
        "import rrt, datasets.config, huggingface_hub.constants as hub; "
        "print(datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[-2] == expected
