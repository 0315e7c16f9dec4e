"""The cache every asset lives in: one root, a cross-process file lock, and build-once directories.

Several DDP ranks or SLURM jobs may ask for the same asset (a converted model, the corpus, packed tokens) at once:
it is built under a file lock, in a temporary directory renamed into place, so readers never see a half-built one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from rrt.utils.atomic import atomic_directory


class MissingAssetError(RuntimeError):
    """A registry package (or tool) that an asset is built from is not available."""


def cache_root() -> Path:
    """``$RRT_CACHE_DIR``, default ``~/.cache/rrt``."""
    return Path(os.environ.get("RRT_CACHE_DIR", Path.home() / ".cache" / "rrt")).expanduser()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock across processes (ranks, SLURM jobs) sharing one file system."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _share(directory: Path) -> None:
    """mkdtemp and some writers make files private; the cache is shared by jobs and users."""
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Create directory ``target`` with ``build(tmp_dir)`` exactly once, atomically, under a lock."""
    if target.is_dir():
        return target
    with file_lock(target.parent / f".{target.name}.lock"):
        if target.is_dir():  # another process finished while we waited
            return target
        with atomic_directory(target) as tmp:
            build(tmp)
            _share(tmp)
    return target
