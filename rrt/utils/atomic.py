"""Atomic file writes: readers see the old file or the new one, never a partial one.

Files are written to a temporary sibling, then renamed over the target. The temporary file is made with
``tempfile.mkstemp``, which creates it 0600; left so, records and models on a shared file system are unreadable to
labmates. ``share_like_open`` gives it the mode a plain ``open(path, "w")`` would have.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically, readable as a plain ``open`` would leave it."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, readable as a plain ``open`` would leave it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        share_like_open(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
