"""Hydra callbacks that check what Hydra itself touches before rrt's code runs.

Hydra creates the run dir (and its ``.hydra/`` files) before it calls the task function, so a runs root that is a
file or read-only would fail inside Hydra with an ``OSError`` traceback; this check answers it in one line first.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def runs_root_problem(root: str | Path) -> str | None:
    """Why runs cannot be created under ``root`` (None when they can)."""
    path = Path(root).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"paths.runs_root={root}: {existing} is a file, not a directory; point paths.runs_root at a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"paths.runs_root={root}: {existing} is not writable; set paths.runs_root to a directory you can write"
    return None


class RunsRootCheck(Callback):
    def _check(self, config: DictConfig) -> None:
        problem = runs_root_problem(str(config.paths.runs_root))
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)
