"""A normal (non-editable) install works: build the wheel, install it into a fresh venv, and run the console entry
points from a directory outside the checkout, with nothing of the checkout on the path.

Offline: the wheel is built with the running environment's setuptools (``--no-build-isolation --no-index``), and the
fresh venv reuses that environment's dependencies through a ``.pth`` line (its ``.pth`` files, the editable rrt's
finder among them, are not processed there), so the only rrt it can import is the installed wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers import ROOT, TINY

SOURCES = ["pyproject.toml", "README.md", "rrt", "analysis", "hydra_plugins"]  # what the wheel is built from


def run(command: list, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"{command} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ dir of a fresh venv holding rrt installed from its wheel (built from a copy of the checkout, so that
    the build leaves nothing in it)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp / "dist", source], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("rrt-*.whl")

    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    python = venv / "bin" / "python"
    site = Path(
        run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).stdout.strip()
    )
    deps = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site / "rrt_test_dependencies.pth").write_text("".join(f"{path}\n" for path in deps))
    # pip comes from the dependencies' site-packages; --ignore-installed: the editable rrt there is not touched
    run([python, "-m", *pip[2:], "install", "--no-deps", "--no-index", "--ignore-installed", wheel], cwd=tmp)
    return venv / "bin"


def outside_env(tmp: Path) -> dict:
    """The environment of a user's shell: nothing of the checkout on the path, no machine overrides."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "OMP_NUM_THREADS": "2", "RRT_CONFIG_DIR": str(tmp / "no-user-config")}


def test_the_wheel_holds_the_configs_and_the_installed_rrt_is_the_wheel(installed, tmp_path):
    code = (
        "import rrt, rrt.conf, hydra_plugins.rrt_launcher, hydra_plugins.rrt_searchpath\n"
        "from importlib.resources import files\n"
        "print(rrt.__file__); print(files('rrt.conf').joinpath('lora', 'default.yaml').is_file())\n"
    )
    result = run([installed / "python", "-c", code], cwd=tmp_path, env=outside_env(tmp_path))
    location, has_yaml = result.stdout.split()
    assert Path(location).is_relative_to(installed.parent) and not Path(location).is_relative_to(ROOT), location
    assert has_yaml == "True"


def test_rrt_train_composes_and_trains_outside_the_checkout(installed, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = outside_env(tmp_path)
    job = run([installed / "rrt-train", "--cfg", "job", *TINY], cwd=work, env=env).stdout
    assert "name: tiny_llama" in job and "loops: 2" in job, job

    runs = tmp_path / "runs"
    run(
        [installed / "rrt-train", *TINY, "budget.tokens=256", "budget.warmup_steps=1", f"paths.runs_root={runs}"],
        cwd=work,
        env=env,
    )
    (record_file,) = runs.rglob("record.json")
    record = json.loads(record_file.read_text())
    assert record["status"] == "complete" and record["config"]["model"]["name"] == "tiny_llama"
    assert record["budget"]["steps"] == 2 and len([m for m in record["metrics"] if "loss" in m]) == 2
    assert (record_file.parent / "model" / "recursion.json").is_file()
    assert not list(work.iterdir())  # outputs go under paths.runs_root only
