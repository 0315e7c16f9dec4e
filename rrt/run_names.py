"""Run identity: which config keys change what a run trains, and the run dir name a command line gets.

One definition serves both the record's config hash (``rrt.training.setting``) and the run dir name, so two
commands that train the same thing share a run dir (and resume or skip), whatever they log or evaluate.
"""

from __future__ import annotations

import hashlib

# Config keys that do not change what is trained: logging, evaluation after training, where files go, how the
# same global batch is spread over devices, and Hydra's own settings.
NOT_IDENTITY = (
    "logger",
    "eval",
    "paths",
    "resume",
    "callbacks",
    "hydra",
    "run_name",
    "task_name",
    "keep_optimizer_state",
    "save_dtype",  # how the final weights are stored (the record says: saved_model.dtype); a new key must not
    # change the hash of runs recorded before it existed
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.accelerator",
    "trainer.enable_progress_bar",
)
MAX_NAME = 120  # characters; file systems allow 255 per path component
DEFAULT_NAME = "default"


def is_identity_key(key: str) -> bool:
    return not any(key == skip or key.startswith(skip + ".") for skip in NOT_IDENTITY)


def override_key(override: str) -> str:
    """``+lora.rank=8`` -> ``lora.rank``; ``hydra/launcher=slurm_cpu`` -> ``hydra.launcher``."""
    return override.split("=", 1)[0].lstrip("+~").replace("/", ".")


def run_name(overrides: list[str]) -> str:
    """The run dir name of a command line: its identity overrides, sorted, as ``key-value+key-value``.

    ``default`` without overrides (so no run dir is the parent of another); a name that had to change to be a
    single short path component (a ``/`` in a value, or more than ``MAX_NAME`` characters) keeps a readable prefix
    and gets a hash of the full overrides, so it stays unique.
    """
    kept = sorted(o.lstrip("+") for o in overrides if is_identity_key(override_key(o)))
    name = "+".join(o.replace("=", "-", 1) for o in kept) or DEFAULT_NAME
    safe = name.replace("/", "_")
    if safe == name and len(name) <= MAX_NAME:
        return name
    return f"{safe[: MAX_NAME - 11].rstrip('+_-')}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"
