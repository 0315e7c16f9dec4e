"""Type and range rules for numeric config keys, checked before any compute.

A rule table per entry point (training in ``rrt.training.preflight``, serving in ``rrt.serving.runner``) names each key,
so ``seed=abc`` or ``budget.micro_batch_size=0`` is answered with the key and what it must be, not a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rrt.errors import UserError

_ABSENT = "<absent>"


@dataclass(frozen=True)
class Rule:
    """One key: its type (int or float), whether null is allowed, and the range it must lie in."""

    kind: type
    check: Callable[[float], bool]
    expected: str
    nullable: bool = False


ANY_INT = Rule(int, lambda v: True, "an integer")
POSITIVE_INT = Rule(int, lambda v: v > 0, "an integer > 0")
COUNT = Rule(int, lambda v: v >= 0, "an integer >= 0")
POSITIVE = Rule(float, lambda v: v > 0, "a number > 0")
NON_NEGATIVE = Rule(float, lambda v: v >= 0, "a number >= 0")
FRACTION = Rule(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def check_value(key: str, value: Any, rule: Rule) -> None:
    if value is None and rule.nullable:
        return
    numeric = (int,) if rule.kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, numeric) or not rule.check(value):
        raise UserError(f"{key}={value!r} must be {rule.expected}")


def check_values(cfg: DictConfig, rules: Mapping[str, Rule], prefix: str = "") -> None:
    """Every key of ``rules`` that ``cfg`` has (absent keys belong to another group choice); ``prefix`` is where
    ``cfg`` sits in the user's config (e.g. ``serve.``), so that messages name the key the user typed."""
    for key, rule in rules.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value != _ABSENT:
            check_value(prefix + key, value, rule)


def check_required(cfg: DictConfig) -> None:
    """Keys left at ``???`` (e.g. ``data=jsonl`` without ``data.train_files``) would fail at first access."""
    missing = sorted(
        key for key in OmegaConf.missing_keys(cfg) if not key.startswith("hydra.")
    )  # Hydra's own: set per job
    if missing:
        raise UserError(
            f"{', '.join(missing)} must be set (e.g. {missing[0]}=...): the chosen config group requires it"
        )


def check_device(device: str, key: str = "device") -> None:
    """``device=cuda`` on a machine without CUDA would fail at the first tensor move, after the model loaded."""
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{key}={device} but this machine has no CUDA device: use {key}=cpu")


def check_output_file(path: str | None, key: str = "output") -> None:
    """A results file must be writable before hours of evaluation are spent on it."""
    if not path:
        return
    from pathlib import Path

    target = Path(path).expanduser().absolute()
    parent = next((p for p in target.parents if p.exists()), None)
    if target.is_dir() or parent is None or not parent.is_dir():
        raise UserError(
            f"{key}={path} must be a file path in a directory (got a directory, or a file where a directory should be)"
        )
