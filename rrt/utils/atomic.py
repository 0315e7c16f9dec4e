"""Atomic file writes: readers see the old file (or directory) or the new one, never a partial one.

Everything rrt writes atomically goes through this module (records, saved models, checkpoints, packed rows, cache
directories). A file is written to a temporary sibling, then renamed over the target:

- ``atomic_write_text`` / ``atomic_write_bytes`` / ``atomic_write_json``: content in memory;
- ``atomic_open``: a handle for a writer that streams into a file object (``np.save``);
- ``atomic_path``: a path for a library that writes by name (safetensors, ``torch.save``, Lightning), on every rank
  of a distributed save (the same ``<name>.tmp`` everywhere; only the owner renames);
- ``atomic_directory``: a directory built in place, then renamed (the cache's build-once dirs).

A temporary file from ``tempfile.mkstemp`` (and safetensors' output) is created 0600; left so, records and models on
a shared file system are unreadable to labmates. ``share_like_open`` gives it the mode a plain ``open(path, "w")``
would have.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_SUFFIX = ".tmp"  # every temporary sibling ends so (a stopped run's leftovers are found by it)


def process_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    Linux reports it in /proc/self/status. Elsewhere ``os.umask`` is the only reader, and it must set a mask to
    read one: the process briefly runs under 022, so a file another thread creates meanwhile is at worst 0644.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_like_open(path: str | Path) -> None:
    """Give ``path`` the mode ``open(path, "w")`` creates files with: 0666 less the umask (0644 under umask 022)."""
    os.chmod(path, 0o666 & ~process_umask())


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A handle on a unique temporary sibling of ``path`` (``mode`` "w" or "wb"); when the block ends without an
    error the data is synced and the file renamed over ``path``, readable as a plain ``open`` would leave it; on an
    error it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        share_like_open(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically, readable as a plain ``open`` would leave it."""
    with atomic_open(path, "w") as handle:
        handle.write(text)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, readable as a plain ``open`` would leave it."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_json(path: str | Path, data: Any, *, indent: int | None = 1, newline: bool = False, **dumps) -> Path:
    """``json.dumps(data, indent=indent, **dumps)`` (plus a final newline if asked) written to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=indent, **dumps) + ("\n" if newline else ""))


@contextlib.contextmanager
def atomic_path(path: str | Path, *, owner: bool = True) -> Iterator[Path]:
    """The temporary sibling ``<path>.tmp`` for a library that writes a file by name.

    When the block ends without an error, the owner (rank 0 of a distributed save; every rank writes through the
    same name) gives the file a plain ``open``'s mode and renames it over ``path``; on an error the owner removes
    it. Other ranks neither rename nor remove.
    """
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        yield tmp
    except BaseException:
        if owner:
            tmp.unlink(missing_ok=True)
        raise
    if owner:
        share_like_open(tmp)
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """A new temporary directory beside ``path`` to build in; renamed to ``path`` when the block ends without an
    error, removed with everything in it on an error. ``path`` must not exist yet (callers hold a lock)."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
